"""Probe figures on decomposed probe rows: normal and restart world side by side, 'all layers' placed last."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from memento_lens.analyses.figures import render_figures
from memento_lens.probes.passcode import ALL_LAYERS
from memento_lens.runtime.rundir.schema import PROBE_RESULTS
from memento_lens.runtime.rundir.store import RunStore


def _rows() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for ckpt, task in (("step-500", 0.8), ("final", 0.95)):
        for layer in (0, 1, 2, -1):
            for cond, dist in (("causal_control", -1), ("direct", 0), ("masked", 1), ("masked", 2)):
                acc, rst = rng.uniform(0.1, 0.6, size=2)
                rows.append(
                    dict(
                        model="toy", checkpoint=ckpt, condition=cond, distance=dist, layer=layer, head=-1,
                        probe="mlp", seed=0, n_train=800, n_val=200, accuracy=acc, ci_low=acc - 0.02,
                        ci_high=acc + 0.02, control_accuracy=0.1, selectivity=acc - 0.1, task_accuracy=task,
                        restart_accuracy=rst, restart_ci_low=rst - 0.01, restart_ci_high=rst + 0.01,
                        text_ceiling=0.1 if cond == "causal_control" else 0.16, implicit_excess=acc - rst,
                    )
                )  # fmt: skip
    return PROBE_RESULTS.frame(rows)


@pytest.fixture
def run(tmp_path):
    store = RunStore.create(tmp_path / "probes", "probes", {"synthetic": True})
    store.write_table("probe_results.parquet", _rows())
    store.mark_complete()
    return store.path


def test_probe_conditions_has_both_worlds(run, tmp_path):
    rep = render_figures(["probe-conditions"], runs=[run], out_dir=tmp_path / "f", png=False)
    assert rep.skipped == {}
    pc = pd.read_csv(tmp_path / "f" / "probe-conditions.csv")
    src = _rows()
    assert set(pc["world"]) == {"normal", "restart"}
    for r in pc[(pc["condition"] == "direct")].itertuples():
        layer = src.layer.where(src.layer >= 0, ALL_LAYERS)  # a run before issue 20 wrote -1 for "all layers"
        want = src[(src.checkpoint == "final") & (src.condition == "direct") & (layer == r.layer)].iloc[0]
        value = want.accuracy if r.world == "normal" else want.restart_accuracy
        assert r.accuracy == pytest.approx(value)
    assert "all layers" in (tmp_path / "f" / "probe-conditions.md").read_text()


def test_toy_leakage_restart_series_and_all_layers_last(run, tmp_path):
    render_figures(["toy-leakage"], runs=[run], out_dir=tmp_path / "f", png=False)
    tl = pd.read_csv(tmp_path / "f" / "toy-leakage.csv")
    src = _rows()
    by_layer = tl[(tl.panel == "by_layer") & (tl.series == "masked, restart world")].sort_values("x")
    assert by_layer["x_label"].tolist() == ["layer 0", "layer 1", "layer 2", "all layers"]
    assert by_layer["x"].tolist() == [0, 1, 2, 3]
    want = src[(src.checkpoint == "final") & (src.condition == "masked") & (src.distance == 1)].set_index("layer")
    assert by_layer["value"].tolist() == pytest.approx(want.loc[[0, 1, 2, -1], "restart_accuracy"].tolist())
    ceiling = tl[(tl.panel == "by_layer") & (tl.series == "text ceiling")]
    assert (ceiling["value"] == 0.16).all()
    ck = tl[(tl.panel == "by_checkpoint") & (tl.series == "masked, restart world")]
    assert ck["x_label"].tolist() == ["step-500", "final"]


def test_reference_worlds_get_their_own_panels_and_series(tmp_path):
    src = _rows()
    src["layer"] = src["layer"].where(src["layer"] >= 0, ALL_LAYERS)  # this round's sentinel
    for i, w in enumerate(("same_sum", "foreign", "delimiter_hidden")):
        src[f"{w}_accuracy"] = 0.11 + 0.01 * i
        src[f"{w}_ci_low"], src[f"{w}_ci_high"] = src[f"{w}_accuracy"] - 0.01, src[f"{w}_accuracy"] + 0.01
    store = RunStore.create(tmp_path / "refs", "probes", {"synthetic": True})
    store.write_table("probe_results.parquet", src)
    store.mark_complete()
    rep = render_figures(["probe-conditions", "toy-leakage"], runs=[store.path], out_dir=tmp_path / "f", png=False)
    assert rep.skipped == {}
    pc = pd.read_csv(tmp_path / "f" / "probe-conditions.csv")
    assert set(pc["world"]) == {"normal", "restart", "same_sum", "foreign", "delimiter_hidden"}
    assert pc[pc.world == "foreign"]["accuracy"].round(3).unique().tolist() == [0.12]
    tl = pd.read_csv(tmp_path / "f" / "toy-leakage.csv")
    hidden = tl[(tl.panel == "by_layer") & (tl.series == "masked, delimiters hidden")].sort_values("x")
    assert hidden["x_label"].tolist() == ["layer 0", "layer 1", "layer 2", "all layers"]
    assert hidden["value"].round(3).unique().tolist() == [0.13]
