"""`memento-lens verify`: passes on a correct runtime, fails (non-zero) on a broken one."""

from __future__ import annotations

import json

import pytest
import torch
from memento_lens.runtime.generate import SlotCache
from memento_lens.runtime.verify import matrix, verify_model
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_verify_passes_with_every_check_of_the_matrix():
    report = verify_model(seed=1)
    assert report.passed, [c for c in report.checks if not c.passed]
    names = {c.name for c in report.checks}
    assert names == {
        "replay_vs_dense_logits",
        "generate_vs_dense_logits",
        "generate_cache_occupancy_vs_schedule",
        "restart_kv_vs_fresh_prefill",
    }
    keeps = {
        (c.config["keep_last_n_blocks"], c.config["mask_delimiters"], c.config["restart_mode"]) for c in report.checks
    }
    assert {(k, md, False) for k in (0, 1, 2) for md in (True, False)} <= keeps
    assert any(c.config["restart_mode"] for c in report.checks)
    assert all(c.tolerance == 1e-4 for c in report.checks if "logits" in c.name)
    assert len(matrix()) == 8


def test_verify_fails_when_eviction_is_broken(monkeypatch):
    monkeypatch.setattr(SlotCache, "drop_range", lambda self, start, end, rows=None: 0)
    report = verify_model()
    assert not report.passed
    failed = {c.name for c in report.checks if not c.passed}
    assert "replay_vs_dense_logits" in failed


def test_cli_verify_prints_json_and_exit_codes(monkeypatch):
    from memento_lens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["verify", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"] is True
    monkeypatch.setattr(SlotCache, "drop_range", lambda self, start, end, rows=None: 0)
    res = runner.invoke(app, ["verify", "--threads", "1"])
    assert res.exit_code == 1 and json.loads(res.stdout)["passed"] is False


def test_cli_bad_input_is_one_line(tmp_path):
    from memento_lens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["generate", "--model", "random:tiny", "-p", "w1", "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "--mask-delimiters" in res.stderr and res.stderr.count("\n") == 1
    res = runner.invoke(app, ["verify", "--model", str(tmp_path / "missing")])
    assert res.exit_code == 2 and str(tmp_path / "missing") in res.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"keep_last_n_blocks": 0}))
    res = runner.invoke(
        app, ["replay", "--toy", "2", "--model", "random:tiny", "--config", str(cfg), "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 2 and "mask_delimiters" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"trace": "x7", "token_ids": [0, 2, 7, 8], "prompt_len": 1}) + "\n")
    res = runner.invoke(
        app,
        [
            "replay",
            "--traces",
            str(bad),
            "--model",
            "random:tiny",
            "--mask-delimiters",
            "false",
            "--out",
            str(tmp_path / "r2"),
            "--threads",
            "1",
        ],
    )
    assert res.exit_code == 2 and "trace 'x7'" in res.stderr and "token 1" in res.stderr
    assert not (tmp_path / "r2").exists()  # nothing half-written


def test_cli_replay_writes_run_and_refuses_other_run(tmp_path):
    from memento_lens.cli import app

    runner = CliRunner()
    traces = tmp_path / "t.jsonl"
    traces.write_text(
        "\n".join(
            json.dumps({"trace": f"t{i}", "token_ids": [0, 1, 7 + i, 8, 2, 3, 9, 4, 10], "prompt_len": 1})
            for i in range(3)
        )
    )
    args = [
        "replay",
        "--traces",
        str(traces),
        "--model",
        "random:tiny",
        "--mask-delimiters",
        "false",
        "--out",
        str(tmp_path / "r"),
        "--threads",
        "1",
        "--evicted-block",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    from memento_lens.runtime.kvstore import KVKey, KVReader

    kv = KVReader(tmp_path / "r")
    assert KVKey("t2", 1, "restart", 0) in kv and KVKey("t0", 0, "evicted_block", 0) in kv
    res = runner.invoke(app, [*args[:-5], "--keep", "1", "--out", str(tmp_path / "r"), "--threads", "1"])
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    res = runner.invoke(app, [*args, "--resume"])  # same config, complete: nothing to do
    assert res.exit_code == 0
