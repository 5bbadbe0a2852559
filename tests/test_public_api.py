"""The lazy public API in memento_lens/__init__.py: cheap to import, every advertised name resolves."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import memento_lens


def test_import_pulls_in_no_heavy_module():
    code = (
        "import sys, memento_lens; "
        "heavy = [m for m in ('torch', 'pandas', 'numpy', 'transformers', 'streamlit') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import memento_lens imported {out.stdout.strip()}"


def test_every_name_in_all_resolves_to_its_owner():
    for name in memento_lens.__all__:
        value = getattr(memento_lens, name)
        assert value is not None, name
        if name != "__version__":
            owner = sys.modules[memento_lens._EXPORTS[name]]
            assert getattr(owner, name) is value, name
            if inspect.isfunction(value) or inspect.isclass(value):  # the defining module, not a re-export
                assert value.__module__ == owner.__name__, (name, value.__module__)
    assert set(memento_lens.__all__) <= set(dir(memento_lens))


def test_unknown_names_raise_attribute_error_and_submodules_still_import():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        memento_lens.nope  # noqa: B018
    from memento_lens import demo  # a submodule, not an export

    assert demo.run_demo is memento_lens.run_demo


def _readme_example() -> str:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    return readme.split("## Ten lines of Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_example_imports_from_one_place():
    example = _readme_example()
    imports = [line for line in example.splitlines() if line.startswith(("from ", "import "))]
    assert imports and all(line.startswith("from memento_lens import ") for line in imports), imports
    names = [n.strip() for line in imports for n in line.split(" import ", 1)[1].split(",")]
    assert set(names) <= set(memento_lens.__all__)


@pytest.mark.integration  # generates on the shipped toy
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it writes runs/mine
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    k, v = scope["k"], scope["v"]
    assert k.shape == v.shape and k.dim() == 4 and k.shape[0] == 1  # [1, kv_heads, pos, d_head]
    assert (tmp_path / "runs" / "mine" / "manifest.json").exists()
    assert "block" in capsys.readouterr().out  # the printed eviction events
