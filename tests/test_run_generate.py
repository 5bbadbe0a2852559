"""`run_generate(out, GenerateConfig)`: the library entry of `generate` gives the CLI's run and the CLI's errors."""

from __future__ import annotations

import pytest
from memento_lens.runtime.errors import OptionError
from memento_lens.runtime.rundir import open_run
from memento_lens.runtime.runs import GenerateConfig, run_generate
from memento_lens.runtime.sampling import SamplingConfig
from typer.testing import CliRunner

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "kwargs,culprit",
    [({"n": 0}, "--n"), ({"batch_size": 0}, "--batch-size"), ({"resume": True, "overwrite": True}, "--resume")],
)
def test_config_checks_itself_with_the_cli_names(kwargs, culprit):
    with pytest.raises(OptionError, match=culprit):
        GenerateConfig(**kwargs)


def test_python_and_cli_write_the_same_run(tmp_path):
    from memento_lens.cli import app

    cfg = GenerateConfig(model="toy", n=3, sampling=SamplingConfig(seed=4, max_new_tokens=40), captures=())
    store, acct = run_generate(tmp_path / "py", cfg)
    assert acct.traces == 3 and acct.masking.keep_last_n_blocks == 0 and acct.notes == []
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--n",
            "3",
            "--seed",
            "4",
            "--max-new-tokens",
            "40",
            "--no-capture",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert res.exit_code == 0, res.output
    py, cli = open_run(tmp_path / "py"), open_run(tmp_path / "cli")
    assert py.table("tokens").equals(cli.table("tokens"))
    assert py.table("events").equals(cli.table("events"))
