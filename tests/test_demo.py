"""The demo pipeline as a library function (memento_lens.demo): its summary's content, end to end on the
shipped toy model at small sizes, and the headline numbers from hand-built tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from memento_lens.demo import SUMMARY_FILE, DemoConfig, run_demo, summarize


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
    # vanilla peak = trace length (4 and 6); memento peak = max held (3 and 4)
    assert s.peak_kv_tokens == {"vanilla": 5.0, "memento": 3.5}
    assert s.kv_bytes_per_token == 96.0 and s.n_traces == 2


@pytest.mark.e2e
@pytest.mark.slow  # ~45 s on 2 cores: the quick passcode sweep dominates
def test_demo_pipeline_summary_names_what_it_wrote(tmp_path):
    from memento_lens.runtime.model import kv_bytes_per_token, load_model
    from memento_lens.runtime.store import RunStore
    from memento_lens.runtime.toy.task import ToyLayout

    out = tmp_path / "demo"
    steps: list[str] = []

    def step(name):
        steps.append(name)
        import contextlib

        return contextlib.nullcontext()

    cfg = DemoConfig(traces=4, probe_samples=200, ablation_samples=4, png=False)
    res = run_demo(out, cfg, step=step)
    s = res.summary

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

    # the run is complete and its summary file is the returned summary
    run = RunStore.open(out, require_complete=True)
    assert json.loads((out / SUMMARY_FILE).read_text()) == json.loads(json.dumps(s.to_dict()))
    assert run.manifest.config["demo"] is True
    ab = run.read_table("ablations.parquet")
    assert set(ab["experiment"]) == {"restart", "patch"}
    assert np.isfinite(ab["value"]).all()
