"""Fixtures of the bad-input suite (see badinput_harness for what every case asserts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from .badinput_harness import GOOD_IDS, make_cli, write_jsonl


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh directory as cwd (default outputs such as runs/generate land here and are snapshotted)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli(monkeypatch):
    return make_cli(monkeypatch)


@pytest.fixture(scope="session")
def good_run(tmp_path_factory) -> Path:
    """A small complete replay run on random:tiny (shared, read-only for the cases)."""
    from memento_lens.cli import app

    root = tmp_path_factory.mktemp("goodrun")
    traces = write_jsonl(
        root / "t.jsonl", [{"trace": f"t{i}", "token_ids": [*GOOD_IDS[:-1], 10 + i], "prompt_len": 1} for i in range(2)]
    )
    res = CliRunner().invoke(
        app,
        [
            "replay",
            "--traces",
            str(traces),
            "--model",
            "random:tiny",
            "--keep-delimiters",
            "--out",
            str(root / "run"),
            "--threads",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    return root / "run"
