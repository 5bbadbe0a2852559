"""CLI: ``probe passcode --json`` shape on a tiny random toy-vocabulary model; bad input; ablate commands."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import small_toy_model
from memento_lens.runtime.rundir.schema import PROBE_RESULTS
from typer.testing import CliRunner

from memento_lens.cli import app

REQUIRED = {"condition", "distance", "layer", "probe", "accuracy", "ci_low", "ci_high", "control_accuracy"}
CONTRACT = PROBE_RESULTS.names
DECOMPOSITION = {
    "restart_accuracy",
    "text_accuracy",
    "text_ceiling",
    "implicit_excess",
    "excess_ci_low",
    "excess_ci_high",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("toyrand")
    small_toy_model().save_pretrained(path)
    return path


def test_passcode_json_rows(model_dir, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "probe",
            "passcode",
            "--model",
            str(model_dir),
            "--samples",
            "200",
            "--quick",
            "--layers",
            "-1",
            "--probes",
            "linear",
            "--distances",
            "1,2",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "--batch-size 256 > --samples 200: using 200" in res.stderr
    rows = json.loads(res.stdout)
    assert isinstance(rows, list) and rows and all((REQUIRED | DECOMPOSITION) <= set(r) for r in rows)
    for r in rows:
        assert r["excess_ci_low"] <= r["implicit_excess"] <= r["excess_ci_high"]
        assert r["implicit_excess"] == pytest.approx(r["accuracy"] - r["restart_accuracy"])
        assert r["role"] == ("pipeline_check" if r["condition"] == "causal_control" else "measurement")
        assert r["text_ceiling"] == pytest.approx(0.1 if r["condition"] == "causal_control" else 0.16, abs=1e-3)
    assert {r["condition"] for r in rows} == {"direct", "masked", "causal_control"}
    assert {r["distance"] for r in rows if r["condition"] == "masked"} == {1, 2}
    assert all(r["layer"] == 1 for r in rows)
    for r in rows:  # issue 18: flags, power and references in every row
        assert r["stopped_by"] in ("plateau", "patience", "cap") and isinstance(r["still_improving"], bool)
        assert r["n_data_seeds"] == 2 and r["n_seeds"] == 3 and r["epochs"] >= 1
        for w in ("same_sum", "foreign", "delimiter_hidden"):
            assert r[f"excess_{w}"] == pytest.approx(r["accuracy"] - r[f"{w}_accuracy"])
            assert r[f"excess_{w}_ci_low"] <= r[f"excess_{w}"] <= r[f"excess_{w}_ci_high"]
        assert r["check"] in (("pass", "fail") if r["condition"] == "causal_control" else ("",))
    df = pd.read_parquet(out / "probe_results.parquet")
    assert list(df.columns) == CONTRACT and len(df) == len(rows)
    for d in (0, 1):
        for w in ("normal", "restart", "same_sum", "foreign", "delimiter_hidden"):
            assert (out / "features" / f"data-{d}" / w / "index.parquet").exists()
    curves = pd.read_parquet(out / "probe_curves.parquet")
    assert set(curves["world"]) == {"normal", "restart", "same_sum", "foreign", "delimiter_hidden", "text", "control"}
    assert set(curves["data_seed"]) == {0, 1}
    assert curves.groupby(["condition", "distance", "world"])["epoch"].max().min() >= 1
    # re-fit from the cached features without the model
    res2 = CliRunner().invoke(
        app,
        [
            "probe",
            "passcode",
            "--features-from",
            str(out),
            "--quick",
            "--layers",
            "-1",
            "--probes",
            "linear",
            "--distances",
            "1",
            "--out",
            str(tmp_path / "refit"),
            "--json",
        ],
    )
    assert res2.exit_code == 0, res2.output
    assert len(json.loads(res2.stdout)) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--distances", "100"], "error: --distances 100: distance 100 beyond the trace"),
        (["--trace", "code.json", "--task", "toy"], "error: --trace code.json: the toy task"),
        (["--worlds", "vanilla"], "error: --worlds: unknown vanilla"),
    ],
)
def test_bad_passcode_options_fail_in_one_line_before_any_work(model_dir, tmp_path, extra, message):
    out = tmp_path / "r"
    args = ["probe", "passcode", "--model", str(model_dir), "--samples", "50", "--out", str(out), *extra]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[-1].startswith(message) and "{" not in lines[-1], res.output
    assert not out.exists()  # nothing written


def test_layer_out_of_range_is_one_line_exit_2(model_dir, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "probe",
            "passcode",
            "--model",
            str(model_dir),
            "--samples",
            "50",
            "--layers",
            "7",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 2
    assert "--layers: layer 7 out of range" in res.output


def test_ablate_restart_and_patch_json(model_dir, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "ablate",
            "restart",
            "--model",
            str(model_dir),
            "--samples",
            "6",
            "--no-generated",
            "--out",
            str(tmp_path / "a"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["variant"] for r in rows} == {"normal", "restart"}
    res = CliRunner().invoke(
        app,
        [
            "ablate",
            "patch",
            "--model",
            str(model_dir),
            "--samples",
            "3",
            "--layers",
            "0",
            "--out",
            str(tmp_path / "p"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "p" / "ablations.parquet")
    assert set(df["experiment"]) == {"patch"} and {0, -1} == set(df["layer"])


def test_ablate_identical_command_shows_its_results_and_a_different_one_is_refused(model_dir, tmp_path, monkeypatch):
    import memento_lens.probes.ablation as ablation

    args = ["ablate", "patch", "--model", str(model_dir), "--samples", "3", "--layers", "0", "--out", str(tmp_path)]
    first = CliRunner().invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    before = (tmp_path / "ablations.parquet").stat().st_mtime_ns

    def no_recompute(*a, **k):
        raise AssertionError("the identical command recomputed its complete run")

    monkeypatch.setattr(ablation, "patch_experiment", no_recompute)
    again = CliRunner().invoke(app, [*args, "--json"])
    assert again.exit_code == 0, again.output
    assert "already holds the complete run of this same command" in again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)  # the existing results, printed again
    assert (tmp_path / "ablations.parquet").stat().st_mtime_ns == before
    other = CliRunner().invoke(app, [*args[:-4], "--samples", "4", "--layers", "0", "--out", str(tmp_path)])
    assert other.exit_code == 2
    assert "samples" in other.output and "--resume" not in other.output
