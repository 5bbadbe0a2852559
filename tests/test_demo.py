"""The demo pipeline as a library function (memento_lens.demo): its summary's content, end to end on the
shipped toy model at small sizes, the headline numbers from hand-built tables, and the run-directory rules
(the store's): incomplete until the summary is written, an earlier run replaced only by a complete new one, the
same demo reused, anything that is not a memento-lens run refused."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from memento_lens.runtime.rundir.store import RunStore

from memento_lens.demo import SUMMARY_FILE, DemoConfig, DemoSummary, run_demo, summarize


class _Tables:
    """A stand-in run that serves one occupancy table."""

    def __init__(self, occ: pd.DataFrame):
        self.occ = occ

    def read_table(self, rel: str) -> pd.DataFrame:
        assert rel == "occupancy.parquet"
        return self.occ


def test_summarize_reads_the_headline_numbers_from_the_tables():
    occ = pd.DataFrame(
        {
            "trace": ["a"] * 4 + ["b"] * 6,
            "mode": "memento",
            "step": [0, 1, 2, 3, 0, 1, 2, 3, 4, 5],
            "tokens": [1, 2, 3, 2, 1, 2, 3, 4, 2, 3],
        }
    )
    occ["bytes"] = occ["tokens"] * 96
    probes = pd.DataFrame(
        [
            {"condition": c, "distance": d, "layer": layer, "probe": p, "accuracy": acc}
            for c, d, layer, p, acc in [
                ("direct", 0, 1, "mlp", 0.30),
                ("masked", 1, 1, "mlp", 0.20),
                ("masked", 2, 1, "mlp", 0.15),  # +2 is not the headline
                ("causal_control", -1, 1, "mlp", 0.11),
                ("direct", 0, 1, "linear", 0.90),  # linear probes are not the headline
                ("direct", 0, 0, "mlp", 0.80),  # nor earlier layers
            ]
        ]
    )
    ablations = pd.DataFrame(
        [
            {"experiment": "restart", "variant": "normal", "metric": "accuracy_teacher_forced", "value": 0.99},
            {"experiment": "restart", "variant": "restart", "metric": "accuracy_teacher_forced", "value": 0.6},
            {"experiment": "restart", "variant": "restart", "metric": "kl_teacher_forced", "value": 2.0},
            {"experiment": "restart", "variant": "normal", "metric": "memento_exact_generated", "value": 0.9},
            {"experiment": "patch", "variant": "normal", "metric": "accuracy_teacher_forced", "value": 0.1},
        ]
    )
    s = summarize(_Tables(occ), probes, ablations, n_layers=2)
    assert s.task_accuracy == {
        "normal/accuracy_teacher_forced": 0.99,
        "restart/accuracy_teacher_forced": 0.6,
        "normal/memento_exact_generated": 0.9,
    }
    assert s.probe_accuracy_last_layer == {"direct": 0.30, "masked": 0.20, "causal_control": 0.11}
    assert s.probe_channels_last_layer == {}  # rows without the decomposition columns
    decomposed = probes.assign(
        restart_accuracy=probes["accuracy"] - 0.05,
        text_accuracy=0.12,
        implicit_excess=0.05,
        excess_ci_low=0.01,
        excess_ci_high=0.09,
    )
    s2 = summarize(_Tables(occ), decomposed, ablations, n_layers=2)
    assert s2.probe_channels_last_layer["masked"] == pytest.approx(
        {"normal": 0.20, "restart": 0.15, "text": 0.12, "excess": 0.05, "excess_ci_low": 0.01, "excess_ci_high": 0.09}
    )
    assert set(s2.probe_channels_last_layer) == {"direct", "masked", "causal_control"}
    # vanilla peak = trace length (4 and 6); memento peak = max held (3 and 4)
    assert s.peak_kv_tokens == {"vanilla": 5.0, "memento": 3.5}
    assert s.kv_bytes_per_token == 96.0 and s.n_traces == 2


SMALL = DemoConfig(traces=4, probe_samples=200, ablation_samples=4, png=False)


def _record_steps(steps: list[str]):
    def step(name):
        steps.append(name)
        return contextlib.nullcontext()

    return step


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One complete small demo run (~40 s on 2 cores: the quick passcode sweep dominates); tests copy it."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    steps: list[str] = []
    res = run_demo(out, SMALL, step=_record_steps(steps))
    return out, res, steps


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _fake_probes(monkeypatch, run: Path) -> None:
    """The passcode sweep returns the fixture run's rows (the sweep itself is tested in test_passcode*)."""
    from memento_lens.probes import passcode

    rows = RunStore.open(run).read_table("probe_results.parquet")
    monkeypatch.setattr(passcode, "run_passcode", lambda *a, **k: SimpleNamespace(rows=rows))


def _hidden(parent: Path) -> list[str]:
    """Staged or replaced runs left beside a target (``.<name>.overwrite-*`` / ``.<name>.replaced-*``)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_pipeline_summary_names_what_it_wrote(demo_run):
    from memento_lens.runtime.model import kv_bytes_per_token, load_model
    from memento_lens.runtime.toy.task import ToyLayout

    out, res, steps = demo_run
    s = res.summary
    assert not res.reused

    # the figures it rendered, by name, each with its files on disk (the old summary said "written": [])
    assert s.figures["written"] == sorted(r.name for r in res.figures.rendered)
    assert {"kv-sawtooth", "restart-ablation"} <= set(s.figures["written"])
    for name in s.figures["written"]:
        assert (out / "figures" / f"{name}.csv").exists() and (out / "figures" / f"{name}.html").exists()
    assert s.figures["png_skipped"]  # png=False says why there are no PNGs

    assert set(s.task_accuracy) == {
        f"{w}/{m}" for w in ("normal", "restart") for m in ("accuracy_teacher_forced", "memento_exact_generated")
    }
    assert all(0.0 <= v <= 1.0 for v in s.task_accuracy.values())
    assert set(s.probe_accuracy_last_layer) == {"direct", "masked", "causal_control"}
    assert s.n_traces == 4
    assert s.peak_kv_tokens["vanilla"] == ToyLayout().length  # every toy trace runs to its full length
    assert s.peak_kv_tokens["memento"] < s.peak_kv_tokens["vanilla"]
    assert s.kv_bytes_per_token == kv_bytes_per_token(load_model("toy").model)
    assert list(s.timings_s) == steps and all(v >= 0 for v in s.timings_s.values())

    # the run is complete, records every demo setting, and its summary file is the returned summary
    run = RunStore.open(out, require_complete=True)
    assert json.loads((out / SUMMARY_FILE).read_text()) == json.loads(json.dumps(s.to_dict()))
    assert run.manifest.config["demo"] is True
    assert {k: run.manifest.config[k] for k in asdict(SMALL)} == asdict(SMALL)
    assert {f"figures/{n}.csv" for n in s.figures["written"]} <= set(run.manifest.files)
    ab = run.read_table("ablations.parquet")
    assert set(ab["experiment"]) == {"restart", "patch"}
    assert np.isfinite(ab["value"]).all()


def _no_recompute(monkeypatch) -> None:
    from memento_lens.analyses import figures
    from memento_lens.probes import ablation, passcode
    from memento_lens.runtime import generate

    for mod, name in [
        (generate, "generate"),
        (passcode, "run_passcode"),
        (ablation, "ablation_inputs"),
        (figures, "render_figures"),
    ]:
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: pytest.fail(f"recomputed: {_n}"))


@pytest.mark.e2e
@pytest.mark.slow
def test_same_demo_on_its_complete_run_reuses_it(demo_run, monkeypatch):
    out, first, _ = demo_run
    before = (out / "manifest.json").read_bytes()
    _no_recompute(monkeypatch)
    again = run_demo(out, SMALL)
    assert again.reused and again.figures is None
    assert again.summary == DemoSummary(**json.loads(json.dumps(first.summary.to_dict())))
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_command_twice_second_prints_the_stored_summary(demo_run, monkeypatch):
    """`memento-lens demo` on its own complete run: says so, prints the stored summary, exits 0, recomputes nothing."""
    from typer.testing import CliRunner

    from memento_lens import demo
    from memento_lens.cli import app

    out, first, _ = demo_run
    # the CLI has no options for the probe/ablation sizes: give it the fixture's
    monkeypatch.setattr(demo, "DemoConfig", functools.partial(DemoConfig, probe_samples=200, ablation_samples=4))
    _no_recompute(monkeypatch)
    res = CliRunner().invoke(app, ["demo", "--no-app", "--out", str(out), "--traces", "4", "--no-png", "--json"])
    assert res.exit_code == 0, res.output
    assert "already holds the complete run" in res.output
    assert json.loads(res.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(first.summary.to_dict()))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("fail_at", ["passcode", "summary"])
def test_failed_demo_replacing_a_demo_run_leaves_the_old_run(demo_run, tmp_path, monkeypatch, fail_at):
    """A different demo config replaces the earlier demo run only once its summary is written: a failure in a
    later step (after generation: the probes, or after figures: the summary) leaves the old run complete and
    untouched, and nothing staged beside it. While the steps run, the target still holds the old run."""
    from memento_lens.probes import passcode

    from memento_lens import demo

    out = _copy(demo_run[0], tmp_path / "demo")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    seen: list[str] = []

    def old_run_still_there(*a, **k):
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        staged = [tmp_path / n for n in _hidden(tmp_path)]
        assert len(staged) == 1 and (staged[0] / "occupancy.parquet").exists()  # the new run, beside the old
        seen.append(fail_at)
        raise RuntimeError(f"injected failure at {fail_at}")

    if fail_at == "passcode":
        monkeypatch.setattr(passcode, "run_passcode", old_run_still_there)
    else:
        _fake_probes(monkeypatch, out)
        monkeypatch.setattr(demo, "summarize", old_run_still_there)
    with pytest.raises(RuntimeError, match="injected"):
        run_demo(out, dataclasses.replace(SMALL, traces=5))
    assert seen == [fail_at]
    run = RunStore.open(out, require_complete=True)  # every checksum verified
    assert run.manifest.config["traces"] == 4
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _hidden(tmp_path) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_interrupted_demo_is_not_a_complete_run_and_the_next_demo_replaces_it(demo_run, tmp_path, monkeypatch):
    from memento_lens.runtime.rundir.store import RunError

    from memento_lens import demo

    out = tmp_path / "demo"
    _fake_probes(monkeypatch, demo_run[0])
    real_summarize = demo.summarize

    def fail(*a, **k):
        raise RuntimeError("injected failure before the summary")

    monkeypatch.setattr(demo, "summarize", fail)
    with pytest.raises(RuntimeError, match="injected"):
        run_demo(out, SMALL)
    with pytest.raises(RunError, match="incomplete"):
        RunStore.open(out, require_complete=True)
    assert RunStore.open(out).has("ablations.parquet") and not (out / SUMMARY_FILE).exists()

    # the demo has no --resume: its own unfinished run is replaced (staged beside it, swapped in when complete)
    monkeypatch.setattr(demo, "summarize", real_summarize)
    res = run_demo(out, SMALL)
    assert not res.reused
    run = RunStore.open(out, require_complete=True)
    assert run.read_json(SUMMARY_FILE) == json.loads(json.dumps(res.summary.to_dict()))
    for r in res.figures.rendered:  # the report names the files where they are after the swap
        assert all(Path(f).parent == out / "figures" and Path(f).is_file() for f in r.files)
    assert _hidden(tmp_path) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_different_demo_config_replaces_the_earlier_demo_run(demo_run, tmp_path, monkeypatch):
    out = _copy(demo_run[0], tmp_path / "demo")
    _fake_probes(monkeypatch, out)
    res = run_demo(out, dataclasses.replace(SMALL, traces=5))
    run = RunStore.open(out, require_complete=True)
    assert run.manifest.config["traces"] == 5 and res.summary.n_traces == 5
    assert {f"figures/{n}.csv" for n in res.summary.figures["written"]} <= set(run.manifest.files)
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_demo_refuses_a_directory_that_is_not_a_run(tmp_path, overwrite):
    from memento_lens.runtime.rundir.store import RunError

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(RunError) as exc:
        run_demo(out, SMALL, overwrite=overwrite)
    assert str(out) in str(exc.value) and "not a memento-lens run" in str(exc.value)
    assert "--overwrite" not in str(exc.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert _hidden(tmp_path) == []


def test_demo_refuses_another_memento_lens_run_without_overwrite(tmp_path):
    from memento_lens.runtime.rundir.store import RunError

    out = tmp_path / "run"
    other = RunStore.create(out, "replay", {"seed": 3})
    other.write_table("notes.parquet", pd.DataFrame({"x": [1, 2]}))
    other.mark_complete()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunError) as exc:
        run_demo(out, SMALL)
    msg = str(exc.value)
    assert str(out) in msg and "first difference: kind" in msg and "--overwrite" in msg and "--resume" not in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_summary_table_rows_do_not_depend_on_key_order(tmp_path):
    """A reused run's summary comes back from JSON with sorted keys; the table reads the same as the first run's."""
    import io

    from rich.console import Console

    from memento_lens.cli_demo import print_summary

    task = {"normal/accuracy_teacher_forced": 0.99, "restart/accuracy_teacher_forced": 0.6}
    task |= {"normal/memento_exact_generated": 0.9, "restart/memento_exact_generated": 0.1}
    probes = {"direct": 0.3, "masked": 0.2, "causal_control": 0.11}
    summary = {"task_accuracy": task, "probe_accuracy_last_layer": probes}
    summary["peak_kv_tokens"] = {"vanilla": 122.0, "memento": 75.0}

    def table(s) -> str:
        buf = io.StringIO()
        print_summary(s, tmp_path, Console(file=buf, width=200))
        return buf.getvalue()

    stored = json.loads(json.dumps(summary, sort_keys=True))
    assert list(stored["task_accuracy"]) != list(task)  # the stored order differs ...
    assert table(stored) == table(summary)  # ... the table does not
    rows = [line for line in table(summary).splitlines() if "task accuracy" in line or "passcode probe" in line]
    assert [r.split("│")[1].strip() for r in rows] == [
        "task accuracy (memento digits, teacher-forced), normal KV",
        "task accuracy (memento digits, teacher-forced), restart KV",
        "task accuracy (whole mementos, generated), normal KV",
        "task accuracy (whole mementos, generated), restart KV",
        "passcode probe, last layer, direct (M2)",
        "passcode probe, last layer, masked (M3, block erased)",
        "passcode probe, last layer, causal control (M1)",
    ]
    ch = {"normal": 0.2, "restart": 0.15, "text": 0.12, "excess": 0.05, "excess_ci_low": 0.01, "excess_ci_high": 0.09}
    masked = [
        line for line in table(summary | {"probe_channels_last_layer": {"masked": ch}}).splitlines() if "(M3" in line
    ]
    assert "normal 20.0% · restart 15.0% · text 12.0% · excess +5.0 [+1.0, +9.0] pts" in masked[0]
    # the causal control prints as a check against chance, never as an excess
    ctrl = {**ch, "normal": 0.104, "check_bound": 0.095, "check_alpha": 0.025, "n_val": 800.0}
    flagged = summary | {
        "probe_channels_last_layer": {"causal_control": ctrl},
        "probe_flags_last_layer": {"causal_control": {"probe": "linear", "check": "pass"}},
    }
    text = table(flagged)
    line = [ln for ln in text.splitlines() if "causal control (M1)" in ln][0]
    assert "normal 10.4% · check against chance: pass (lower bound 9.5% at alpha 0.025" in line
    assert "excess" not in line
