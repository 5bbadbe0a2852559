"""Bad run directories (foreign, incomplete, corrupt manifest, wrong-typed entries, tampered tables, other
schema) read by replay, kv, stats, figures and the app's data layer; and the app's own inputs."""

from __future__ import annotations

import json

import pytest
from memento_lens.runtime.errors import MementoLensError, RunDirError

from .badinput_harness import copy_run, edit_manifest, run_case, snapshot

READERS = {
    "replay": lambda run: ["replay", "--model", "random:tiny", "--keep-delimiters", "--traces", run, "--threads", "1"],
    "kv": lambda run: ["kv", run],
    "stats": lambda run: ["stats", run],
    "figures": lambda run: ["figures", "kv-sawtooth", "--run", run, "--no-png"],
}


def _damage(run, how: str) -> None:
    m = run / "manifest.json"
    if how == "manifest-not-json":
        m.write_text("{broken")
    elif how == "manifest-list":
        m.write_text("[]")
    elif how == "manifest-missing":
        m.unlink()
    elif how == "files-list":
        edit_manifest(run, lambda d: d.__setitem__("files", ["tokens.parquet"]))
    elif how == "files-entry-string":
        edit_manifest(run, lambda d: d["files"].__setitem__("tokens.parquet", "abc"))
    elif how == "files-entry-int":
        edit_manifest(run, lambda d: d["files"].__setitem__("tokens.parquet", 7))
    elif how == "files-escape":
        edit_manifest(run, lambda d: d["files"].__setitem__("../outside.parquet", {"sha256": "0", "bytes": 1}))
    elif how == "schema-newer":
        edit_manifest(run, lambda d: d.__setitem__("schema_version", 99))
    elif how == "schema-text":
        edit_manifest(run, lambda d: d.__setitem__("schema_version", "one"))
    elif how == "incomplete":
        edit_manifest(run, lambda d: d.__setitem__("status", "incomplete"))
    elif how == "tokens-tampered":
        p = run / "tokens.parquet"
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    elif how == "tokens-missing":
        (run / "tokens.parquet").unlink()
    elif how == "traces-truncated":
        p = run / "traces.parquet"
        p.write_bytes(p.read_bytes()[:20])


DAMAGE = [
    "manifest-not-json",
    "manifest-list",
    "manifest-missing",
    "files-list",
    "files-entry-string",
    "files-entry-int",
    "files-escape",
    "schema-newer",
    "schema-text",
    "incomplete",
    "tokens-tampered",
    "tokens-missing",
    "traces-truncated",
]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("reader", ["replay", "kv", "stats"])
def test_damaged_run_is_named(cli, workdir, good_run, how, reader):
    run = copy_run(good_run, workdir / "run")
    _damage(run, how)
    run_case(cli, workdir, READERS[reader](run), RunDirError, "run")


@pytest.mark.parametrize("how", ["files-list", "files-entry-string", "manifest-not-json", "schema-newer"])
def test_figures_on_a_damaged_run(cli, workdir, good_run, how):
    run = copy_run(good_run, workdir / "run")
    _damage(run, how)
    run_case(cli, workdir, READERS["figures"](run), RunDirError, "run")


@pytest.mark.parametrize("reader", ["replay", "kv", "stats"])
def test_folder_that_is_not_a_run(cli, workdir, reader):
    (workdir / "notes").mkdir()
    (workdir / "notes" / "todo.txt").write_text("mine")
    run_case(cli, workdir, READERS[reader](workdir / "notes"), RunDirError, "notes")


def test_figures_run_missing(cli, workdir):
    run_case(cli, workdir, READERS["figures"](workdir / "nowhere"), MementoLensError, "nowhere")


def test_resume_with_a_different_config_keeps_the_run(cli, workdir, good_run):
    run = copy_run(good_run, workdir / "run")
    edit_manifest(run, lambda d: d.__setitem__("status", "incomplete"))
    traces = workdir / "t.jsonl"
    traces.write_text(json.dumps({"trace": "z", "token_ids": [0, 1, 7, 2, 3, 8, 4], "prompt_len": 1}) + "\n")
    args = ["replay", "--model", "random:tiny", "--keep-delimiters", "--keep", "1", "--traces", traces]
    run_case(cli, workdir, [*args, "--out", run, "--resume"], RunDirError, "run")


# -- the app's data layer: what its Runs page and every page open ------------------------------------------------
@pytest.mark.parametrize("how", DAMAGE)
def test_app_data_names_a_damaged_run(workdir, good_run, how):
    from memento_lens.app.data import RunData, discover_runs

    run = copy_run(good_run, workdir / "run")
    _damage(run, how)
    before = snapshot(workdir)
    refs = discover_runs([run])
    if how == "manifest-missing":
        assert refs[0].error and str(run) in refs[0].error
    elif how == "incomplete":  # shown, with a banner that names the run
        msg = RunData(run).incomplete_message()
        assert msg and str(run) in msg
    else:  # opening the run raises a RunDirError, or verifying its files reports the damage
        try:
            data = RunData(run)
            data.summary()
            errors = data.verify_all()
        except RunDirError as exc:
            errors = [str(exc)]
        assert errors and all(str(run) in e for e in errors), errors
    assert snapshot(workdir) == before


def test_app_discover_names_a_missing_directory(workdir):
    from memento_lens.app.data import discover_runs

    refs = discover_runs([workdir / "gone"])
    assert refs[0].error and "gone" in refs[0].error


def test_app_command_names_a_missing_run_dir(workdir):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["app", str(workdir / "gone")])
    assert res.exit_code == 2 and "gone" in res.stderr and res.stderr.count("\n") == 1
