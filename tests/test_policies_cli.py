"""``--keep -1`` (KEEP_ALL) through the CLI: refused with an evicting mode, naming the option; stated in --help.

Integration tier (the default for this file): the generate case loads a tiny random model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner


def test_cli_generate_refuses_keep_all_with_mode_memento(tmp_path):
    from memento_lens.cli import app

    out = tmp_path / "run"
    args = ["generate", "--model", "random:tiny", "--threads", "1", "-p", "w6 w7", "--keep-delimiters"]
    res = CliRunner().invoke(
        app, [*args, "--max-new-tokens", "2", "--mode", "memento", "--keep", "-1", "--out", str(out)]
    )
    assert res.exit_code == 2, res.output
    assert "--keep -1" in res.output and "--mode memento" in res.output and "--mode vanilla" in res.output
    assert not out.exists()


def test_cli_kv_refuses_keep_all(tmp_path):
    from memento_lens.cli import app

    data = Path("/work/shared/data/memento_example_math.json")
    if not data.exists():
        data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "memento_example_math.json"
    if not data.exists():
        pytest.skip("shared example trace not present")
    res = CliRunner().invoke(app, ["kv", str(data), "--keep", "-1"])
    assert res.exit_code == 2 and "--keep -1" in res.output, res.output


def test_keep_help_names_keep_all():
    from memento_lens.cli import app

    for cmd in ("generate", "replay"):
        res = CliRunner().invoke(app, [cmd, "--help"], terminal_width=200)
        assert res.exit_code == 0
        assert "KEEP_ALL" in " ".join(res.output.split()), cmd
