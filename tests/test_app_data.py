"""The app's data-access layer and its CLI command (no streamlit script runs here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from memento_lens.app.data import ENV_RUNS, KVKey, RunData, discover_runs, manifest_fingerprint
from memento_lens.app.fixtures import FixtureSpec, write_fixture_run
from memento_lens.runtime.rundir.store import CorruptFile, RunError
from safetensors.torch import load_file
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_fixture_run(tmp_path_factory.mktemp("data") / "run", FixtureSpec(n_traces=3, traces_per_shard=2))


def test_fixture_run_follows_the_contract(run_dir):
    rd = RunData(run_dir)
    assert rd.complete and not rd.verify_all()
    tok = rd.tokens("t0001")
    assert tok["pos"].tolist() == list(range(len(tok)))
    assert set(tok["role"]) == {"prompt", "block", "delimiter", "memento", "answer"}
    idx = rd.kv_index()
    assert set(idx["variant"]) == {"normal", "restart", "evicted_block"}
    for r in idx.head(6).itertuples():
        k = load_file(str(run_dir / r.shard))[r.key]
        assert k.shape[0] == 1 and k.shape[2] == r.end - r.start  # [1, kv_heads, end-start, d]
    # the evicted_block KV covers exactly the block the events evict (delimiters kept: block content only)
    ev = rd.events("t0000")
    blk = idx[(idx.trace == "t0000") & (idx.variant == "evicted_block") & (idx.layer == 0)].sort_values("block")
    assert (blk["start"].to_numpy() + 1 == ev["start"].to_numpy()).all()


def test_kv_by_typed_key_and_kv_many_agree(run_dir):
    rd = RunData(run_dir)
    key = KVKey("t0002", layer=1, variant="restart", block=2)
    k, v, (s, e) = rd.kv(key)
    row = rd.kv_index("t0002").query("layer == 1 and variant == 'restart' and block == 2").iloc[0]
    raw = load_file(str(run_dir / row["shard"]))
    assert torch.equal(k, raw[row["key"]]) and torch.equal(v, raw[row["value"]]) and (s, e) == (row.start, row.end)
    many = rd.kv_many([key, KVKey("t0002", 0, "normal", 0), KVKey("t0002", 0, "normal", 99)])
    assert set(many) == {key, KVKey("t0002", 0, "normal", 0)}  # uncaptured keys left out
    assert torch.equal(many[key][0], k)
    with pytest.raises(RunError, match="no restart KV for trace 't0002' layer 1 block 99"):
        rd.kv(KVKey("t0002", 1, "restart", 99))


def test_per_trace_reads_only_return_that_trace(run_dir):
    rd = RunData(run_dir)
    for read in (rd.tokens, rd.events, rd.occupancy, rd.kv_index):
        assert set(read("t0001")["trace"]) == {"t0001"}
    with pytest.raises(RunError, match="no tokens for trace 'nope'"):
        rd.tokens("nope")


def test_summary(run_dir):
    s = RunData(run_dir).summary()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (s.status, s.kind, s.model, s.n_traces) == ("complete", "fixture", "fixture-tiny", 3)
    assert s.masking["keep_last_n_blocks"] == 0 and s.masking["mask_delimiters"] is False
    assert s.total_bytes == sum(f["bytes"] for f in manifest["files"].values())
    assert s.kv_bytes == sum(f["bytes"] for r, f in manifest["files"].items() if r.startswith("kv/"))
    assert s.category_mb["kv"] == pytest.approx(s.kv_bytes / 1e6)
    assert all(s.has.values())


def test_corrupt_shard_is_named_when_read(run_dir, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    shard = dst / "kv" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    rd = RunData(dst)  # opening stays cheap: nothing hashed yet
    rd.kv(KVKey("t0000", 0, "normal", 0))  # other shards still read
    with pytest.raises(CorruptFile, match="shard-00001.safetensors: checksum mismatch"):
        rd.kv(KVKey("t0002", 0, "normal", 0))
    assert any("shard-00001" in e for e in rd.verify_all())


def test_missing_table_message(tmp_path):
    run = write_fixture_run(
        tmp_path / "r", FixtureSpec(n_traces=1, probes=False, ablations=False, figures=False, attention_traces=0)
    )
    rd = RunData(run)
    with pytest.raises(RunError, match="probe_results.parquet: missing; this run has no probe results"):
        rd.probe_results()
    assert rd.figures() == {} and not rd.has("attention/index.parquet")


def test_fingerprint_changes_when_the_run_changes(tmp_path):
    run = write_fixture_run(tmp_path / "r", FixtureSpec(n_traces=1, seed=0))
    fp = manifest_fingerprint(run)
    write_fixture_run(run, FixtureSpec(n_traces=1, seed=1))
    assert manifest_fingerprint(run) != fp
    with pytest.raises(RunError, match="no such run directory"):
        manifest_fingerprint(tmp_path / "absent")


def test_discover_only_what_was_named(run_dir, tmp_path):
    (tmp_path / "a").mkdir()
    inner = write_fixture_run(tmp_path / "a" / "inner", FixtureSpec(n_traces=1))
    (tmp_path / "a" / "inner" / "deeper").mkdir()
    refs = discover_runs([run_dir, tmp_path / "a", tmp_path / "missing", tmp_path / "a" / "inner"])
    ok = [r.path for r in refs if r.error is None]
    assert ok == [str(run_dir.resolve()), str(inner.resolve())]  # de-duplicated, in order
    bad = [r.error for r in refs if r.error]
    assert len(bad) == 1 and "no such run directory" in bad[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a memento-lens run" in discover_runs([empty])[0].error


# -- CLI ------------------------------------------------------------------------------------------------
def test_streamlit_command_binds_loopback_headless_and_passes_runs(run_dir):
    from memento_lens.cli_app import streamlit_command

    argv, env = streamlit_command([run_dir], "127.0.0.1", 8765)
    assert argv[1:4] == ["-m", "streamlit", "run"] and Path(argv[4]).name == "main.py" and Path(argv[4]).exists()
    opts = dict(zip(argv[5::2], argv[6::2]))
    assert opts["--server.address"] == "127.0.0.1" and opts["--server.port"] == "8765"
    assert opts["--server.headless"] == "true" and opts["--browser.gatherUsageStats"] == "false"
    assert env[ENV_RUNS].split(os.pathsep) == [str(run_dir.resolve())]


def test_app_cli_default_host_and_demo_message(tmp_path, monkeypatch):
    from memento_lens import cli_app
    from memento_lens.cli import app

    calls = []
    monkeypatch.setattr(cli_app.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["app"])
    assert res.exit_code == 2 and "runs/demo does not exist" in res.output and "memento-lens demo" in res.output
    assert not calls
    res = runner.invoke(app, ["app", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such run directory" in res.output
    demo = write_fixture_run(tmp_path / "runs" / "demo", FixtureSpec(n_traces=1))
    res = runner.invoke(app, ["app", "--port", "9999"])
    assert res.exit_code == 0, res.output
    ((argv, env),) = calls
    assert "127.0.0.1" in argv and "9999" in argv
    assert env[ENV_RUNS] == str(demo.resolve())


def test_residue_traces_need_both_variants(run_dir, tmp_path):
    import shutil

    import pandas as pd
    from memento_lens.runtime.rundir.store import RunStore

    assert RunData(run_dir).residue_traces() == ["t0000", "t0001", "t0002"]
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    idx = pd.read_parquet(dst / "kv/index.parquet")
    RunStore.open(dst).write_table("kv/index.parquet", idx[~((idx.trace == "t0001") & (idx.variant == "restart"))])
    assert RunData(dst).residue_traces() == ["t0000", "t0002"]


def test_visibility_is_the_runtime_rule_for_every_query_and_rows_decode(tmp_path):
    from memento_lens.runtime.masks import events_from_table, visible_at

    run = write_fixture_run(
        tmp_path / "c",
        FixtureSpec(n_traces=1, attention_queries=400, attention_compact=True, probes=False, ablations=False),
    )
    rd = RunData(run)
    n = len(rd.tokens("t0000"))
    evs = events_from_table(rd.events("t0000"))
    vis = rd.visibility("t0000")
    for q in range(n):
        assert (vis(q) == visible_at(evs, q, n)).all(), q
    rows = rd.attention_rows("t0000", "normal", 1)
    qs = list(rows)
    full = rd.attention("t0000", "normal", 1, qs[-1])  # compact float16 decoded over every position
    assert full.shape == (4, n) and (full[:, ~vis(qs[-1])] == 0).all()
    assert abs(float(full.sum(-1).mean()) - 1.0) < 1e-3
    win = rows.window(qs[-3:], 4, 5, n - 2)  # scattered straight from storage == the decoded rows' slice
    for i, q in enumerate(qs[-3:]):
        assert (win[i] == rows[q][:, 5 : n - 2]).all()
    assert len(rows.sample(0, n, 10)) == 10 and len(rows.sample(0, n, None)) == len(rows)
