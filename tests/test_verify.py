"""`memento-lens verify`: passes on a correct runtime, fails (non-zero) on a broken one."""

from __future__ import annotations

import json

import pytest
import torch
from memento_lens.runtime.generate import SlotCache
from memento_lens.runtime.verify import RELATIVE_TOLERANCE, matrix, verify_model
from typer.testing import CliRunner


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
    assert len(matrix()) == 8
    # every check ran twice: in the working dtype and on the float64 copy (the exactness proof)
    assert {c.dtype for c in report.checks} == {"float32", "float64"}
    assert sum(c.dtype == "float32" for c in report.checks) == sum(c.dtype == "float64" for c in report.checks)
    for c in report.checks:
        if "logits" in c.name:
            rel = RELATIVE_TOLERANCE[getattr(torch, c.dtype)]
            assert c.tolerance == pytest.approx(rel * max(1.0, c.scale))
    f64 = [c for c in report.checks if c.dtype == "float64" and c.scale]
    assert max(c.value / max(1.0, c.scale) for c in f64) < 1e-12


def test_verify_passes_on_the_shipped_toy_whose_logits_are_large():
    # the trained toy's logits reach ~15: an absolute 1e-4 failed 3 of 25 checks on float32 rounding alone
    report = verify_model("toy")
    assert report.passed, [(c.name, c.dtype, c.value, c.tolerance) for c in report.checks if not c.passed]
    assert max(c.scale for c in report.checks if c.name == "replay_vs_dense_logits") > 5
    f64 = [c for c in report.checks if c.dtype == "float64" and "logits" in c.name]
    assert f64 and all(c.value <= 1e-10 * c.scale for c in f64)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_verify_passes_on_every_toy_checkpoint(dtype):
    from memento_lens.runtime.toy.shipped import list_checkpoints

    for ck in list_checkpoints():
        report = verify_model(f"toy@{ck}", dtype=dtype)
        assert report.passed, (ck, [(c.name, c.dtype, c.value) for c in report.checks if not c.passed])
        assert {c.dtype for c in report.checks} == ({"float32", "float64"} if dtype == "float32" else {"float64"})


def test_verify_in_float64_runs_once_and_is_exact():
    report = verify_model("random:toy", dtype="float64")
    assert report.passed and {c.dtype for c in report.checks} == {"float64"}
    assert report.to_dict()["relative_tolerance"] == {"float64": 1e-10}


def test_verify_fails_when_eviction_is_broken(monkeypatch):
    monkeypatch.setattr(SlotCache, "drop_range", lambda self, start, end, rows=None: 0)
    report = verify_model()
    assert not report.passed
    failed = {(c.name, c.dtype) for c in report.checks if not c.passed}
    assert ("replay_vs_dense_logits", "float32") in failed
    assert ("replay_vs_dense_logits", "float64") in failed  # the float64 proof catches it too


def test_cli_verify_prints_json_and_exit_codes(monkeypatch):
    from memento_lens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["verify", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"] is True
    res = runner.invoke(app, ["verify", "--model", "toy", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dtypes"] == ["float32", "float64"]
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
            "--keep-delimiters",
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
        "--keep-delimiters",
        "--out",
        str(tmp_path / "r"),
        "--threads",
        "1",
        "--evicted-block",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    from memento_lens.runtime.rundir import KVKey, KVReader

    kv = KVReader(tmp_path / "r")
    assert KVKey("t2", 1, "restart", 0) in kv and KVKey("t0", 0, "evicted_block", 0) in kv
    res = runner.invoke(app, [*args[:-5], "--keep", "1", "--out", str(tmp_path / "r"), "--threads", "1"])
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    res = runner.invoke(app, [*args, "--resume"])  # same config, complete: nothing to do
    assert res.exit_code == 0


def test_float64_rms_norms_make_the_reference_float64_end_to_end():
    """HF's RMSNorm rounds a float64 input to float32; inside the context every norm (including Qwen3's per-head
    q/k norms) computes in float64, and the hooks are gone afterwards."""
    from memento_lens.runtime.hf_paths import rms_norms
    from memento_lens.runtime.model import load_model
    from memento_lens.runtime.verify import float64_rms_norms

    model = load_model("random:tiny", dtype="float64").model
    norms = rms_norms(model)
    assert len(norms) == 2 * model.config.num_hidden_layers * 2 + 1  # input/post + q/k per layer, final
    norm = norms[0]
    torch.manual_seed(0)
    x = torch.randn(2, 5, norm.weight.shape[0], dtype=torch.float64) * 100
    exact = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))
    plain = norm(x)
    assert plain.dtype == torch.float64 and (plain - exact).abs().max() > 1e-9  # float32-rounded inside
    with float64_rms_norms(model) as n:
        assert n == len(norms)
        assert (norm(x) - exact).abs().max() < 1e-12
    assert torch.equal(norm(x), plain)  # hooks removed


def test_verify_is_proportionate_on_a_large_model_and_says_so(monkeypatch):
    """Above FULL_MATRIX_MAX_PARAMS the float64 reference runs one config per eviction path and per-token
    generation one stream; the report's scope names what was left out, and --full (full=True) runs everything."""
    from memento_lens.runtime import verify as V

    monkeypatch.setattr(V, "FULL_MATRIX_MAX_PARAMS", 10)  # the tiny random model counts as large
    small = verify_model(seed=1)
    assert small.passed, [c for c in small.checks if not c.passed]
    assert small.scope.startswith("proportionate") and "--full" in small.scope
    ref = [c for c in small.checks if c.dtype == "float64"]
    ref_keys = {(c.config["keep_last_n_blocks"], c.config["mask_delimiters"], c.config["restart_mode"]) for c in ref}
    assert ref_keys == V.REFERENCE_KEYS  # compact, keep-1 masked delimiters, restart
    work = [c for c in small.checks if c.dtype == "float32"]
    assert len({tuple(sorted(c.config.items())) for c in work}) == len(matrix())  # working dtype: every config
    assert all("1 of 3 streams" in c.note for c in small.checks if c.name == "generate_vs_dense_logits")
    full = verify_model(seed=1, full=True)
    assert full.scope == "full" and len(full.checks) > len(small.checks)
    assert {c.dtype for c in full.checks if c.config["keep_last_n_blocks"] == 2} == {"float32", "float64"}


def test_verify_progress_advances_once_per_check_step():
    """The bar a caller passes moves through every step (replay and generation per config, both precisions)."""

    class Bar:
        def __init__(self):
            self.n, self.descs = 0, []

        def update(self, n=1):
            self.n += n

        def set_description(self, text):
            self.descs.append(text)

        def close(self):
            pass

    bar = Bar()
    report = verify_model(seed=2, progress=bar)
    assert report.passed and bar.n == 2 * 2 * len(matrix())  # 2 steps x 8 configs x (float32 + float64)
    assert any("float64" in d for d in bar.descs)
