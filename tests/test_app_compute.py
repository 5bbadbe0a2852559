"""Pure helpers of the app on hand-built tensors: evicted-at-step, attention mass by role, residue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memento_lens.app import compute


def test_evicted_at_step_takes_effect_at_the_firing_position():
    # one event fired at position 6 evicting [1, 4); an empty range (forced block end) at 3
    starts, ends, positions = [1, 3], [4, 3], [6, 3]
    assert not compute.evicted_at_step(8, starts, ends, positions, step=5).any()
    gone = compute.evicted_at_step(8, starts, ends, positions, step=6)
    assert gone.tolist() == [False, True, True, True, False, False, False, False]
    assert compute.evicted_at_step(8, starts, ends, positions, step=7).tolist() == gone.tolist()


def test_evicted_at_step_accumulates_and_clips():
    gone = compute.evicted_at_step(10, [1, 5], [3, 20], [4, 8], step=9)
    assert gone.nonzero()[0].tolist() == [1, 2, 5, 6, 7, 8, 9]


def test_visible_at_step_is_causal_minus_evicted():
    vis = compute.visible_at_step(8, [1], [4], [6], step=6)
    assert vis.tolist() == [True, False, False, False, True, True, True, False]


ROLES = [
    "prompt",
    "prompt",
    "delimiter",
    "block",
    "block",
    "delimiter",
    "delimiter",
    "memento",
    "delimiter",
    "delimiter",
    "block",
    "block",
    "answer",
]
BLOCKS = [-1, -1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, -1]


def test_attention_mass_by_role_sums_each_category():
    # query at 11 (block 1 content); block 0 content [3, 5) evicted
    visible = compute.visible_at_step(13, [3], [5], [8], step=11)
    w = np.zeros(13)
    w[[0, 1]] = 0.1, 0.1  # prompt
    w[2] = 0.05  # delimiter
    w[7] = 0.3  # memento
    w[[10, 11]] = 0.2, 0.25  # current block
    m = compute.attention_mass_by_role(w, ROLES, BLOCKS, 11, visible)
    assert m["prompt"] == pytest.approx(0.2)
    assert m["mementos"] == pytest.approx(0.3)
    assert m["current block"] == pytest.approx(0.45)
    assert m["delimiters"] == pytest.approx(0.05)
    assert m["other visible blocks"] == 0 and m["evicted"] == 0 and m["answer"] == 0
    assert sum(m.values()) == pytest.approx(w.sum())


def test_attention_mass_flags_weight_on_evicted_positions_and_averages_heads():
    visible = compute.visible_at_step(13, [3], [5], [8], step=11)
    w = torch.zeros(2, 13)
    w[0, 3] = 1.0  # head 0 all on an evicted position (a leak)
    w[1, 4] = 0.5
    w[1, 12] = 0.5  # future position (answer, after the query): not visible either
    m = compute.attention_mass_by_role(w, ROLES, BLOCKS, 11, visible)
    assert m["evicted"] == pytest.approx(0.75)  # mean over heads of (1.0, 0.5)
    assert m["future"] == pytest.approx(0.25)  # mean over heads of (0, 0.5)
    assert m["current block"] == 0


def test_other_visible_block_when_query_is_outside_any_block():
    visible = np.ones(13, dtype=bool)
    cats = compute.mass_categories(ROLES, BLOCKS, 12, visible)  # query is an answer token
    assert cats[3] == "other visible blocks" and cats[10] == "other visible blocks"
    assert cats[12] == "answer"


def test_residue_relative_l2_and_cosine_per_head():
    normal = torch.zeros(1, 2, 2, 2)
    normal[0, 0] = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ||.|| = 5
    normal[0, 1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    restart = normal.clone()
    restart[0, 0, 0, 0] = 0.0  # diff norm 3 -> rel 0.6
    restart[0, 1] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # orthogonal -> cosine 0, rel sqrt(2)
    r = compute.residue(normal, restart)
    assert r.rel_l2 == pytest.approx([0.6, np.sqrt(2)])
    assert r.cosine == pytest.approx([16 / 20, 0.0])  # <n, r> = 16, |n| = 5, |r| = 4


def test_residue_identical_is_zero_and_shape_mismatch_raises():
    x = torch.randn(1, 3, 4, 5)
    r = compute.residue(x, x.clone())
    assert r.rel_l2 == pytest.approx(np.zeros(3)) and r.cosine == pytest.approx(np.ones(3))
    with pytest.raises(ValueError, match="differ in shape"):
        compute.residue(x, x[:, :, :3])


def test_residue_per_position():
    normal = torch.ones(1, 1, 3, 4)
    restart = normal.clone()
    restart[0, 0, 1] = 0.0
    assert compute.residue_per_position(normal, restart, head=0) == pytest.approx([0.0, 1.0, 0.0])


def test_align_ranges():
    assert compute.align_ranges((10, 15), (12, 15)) == (slice(2, 5), slice(0, 3))
    assert compute.align_ranges((0, 3), (3, 6)) is None


def test_role_colors_one_distinct_colour_per_role():
    colors = compute.role_colors()
    assert set(colors) == set(compute.ROLES)
    assert len(set(colors.values())) == len(colors)


def test_vanilla_overlay_added_only_when_missing():
    import pandas as pd

    occ = pd.DataFrame(
        {"trace": "t", "mode": "memento", "step": [0, 1, 2, 3], "tokens": [1, 2, 1, 2], "bytes": [10, 20, 10, 20]}
    )
    out = compute.with_vanilla_overlay(occ)
    van = out[out["mode"] == "vanilla"]
    assert van["tokens"].tolist() == [1, 2, 3, 4] and van["bytes"].tolist() == [10, 20, 30, 40]
    assert (van["trace"] == "t").all() and len(out) == 8
    both = pd.concat([occ, occ.assign(mode="vanilla", tokens=[1, 2, 3, 4])])
    assert compute.with_vanilla_overlay(both) is both


def _probe_rows():
    import pandas as pd

    rows = []
    for cond, dist, layers in (
        ("causal_control", -1, range(4)),
        ("direct", 0, range(4)),
        ("masked", 1, range(4)),
        ("masked", 2, [3]),
        ("masked", 7, [3]),
    ):
        for layer in layers:
            rows.append(
                {
                    "condition": cond,
                    "distance": dist,
                    "layer": layer,
                    "head": -1,
                    "checkpoint": "",
                    "accuracy": 0.1 * layer + dist,
                }
            )
    rows.append({"condition": "direct", "distance": 0, "layer": 0, "head": 1, "checkpoint": "", "accuracy": 9.0})
    return pd.DataFrame(rows)


def test_probe_selection_by_layer_fixes_each_conditions_distance():
    sel = compute.probe_selection(_probe_rows(), "layer", checkpoint="")
    got = {c: sorted(zip(g.distance, g.layer)) for c, g in sel.groupby("condition")}
    assert got == {
        "causal_control": [(-1, l) for l in range(4)],
        "direct": [(0, l) for l in range(4)],
        "masked": [(1, l) for l in range(4)],
    }  # nearest masked distance; head -1 only
    sel = compute.probe_selection(_probe_rows(), "layer", distance=7)
    assert sel[sel.condition == "masked"][["distance", "layer"]].values.tolist() == [[7, 3]]


def test_probe_selection_by_distance_uses_the_last_layer_by_default():
    sel = compute.probe_selection(_probe_rows(), "distance")
    assert sorted(sel[sel.condition == "masked"].distance) == [1, 2, 7]
    assert set(sel.layer) == {3}
    sel = compute.probe_selection(_probe_rows(), "distance", layer=0)
    assert sorted(sel[sel.condition == "masked"].distance) == [1]


def test_nearest_distance():
    assert compute.nearest_distance([7, 2, 1]) == 1 and compute.nearest_distance([-1]) == -1
    assert compute.nearest_distance([-1, 1]) == 1


def test_token_stream_html_puts_each_memento_beside_its_block_and_escapes():
    import re

    import pandas as pd
    from memento_lens.app import charts

    toks = [
        "<b>",
        "x",
        "<|block_start|>",
        "a",
        "b",
        "<|block_end|>",
        "<|summary_start|>",
        "M",
        "<|summary_end|>",
        "ans",
    ]
    roles = [
        "prompt",
        "prompt",
        "delimiter",
        "block",
        "block",
        "delimiter",
        "delimiter",
        "memento",
        "delimiter",
        "answer",
    ]
    blocks = [-1, -1, 0, 0, 0, 0, 0, 0, 0, -1]
    df = pd.DataFrame({"pos": range(10), "token": toks, "role": roles, "block": blocks})
    gone = compute.evicted_at_step(10, [3], [5], [8], step=9)
    html = charts.token_stream_html(df, gone, step=9)
    assert "<b>" not in html.replace("<b>prompt</b>", "").replace("<b>answer</b>", "") and "&lt;b&gt;" in html
    row = re.search(r"<tr><td[^>]*>0</td>(.*?)</tr>", html).group(1)
    block_cell, memento_cell = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert ">a<" in block_cell and ">M<" in memento_cell and "summary_start" in memento_cell
    struck = re.findall(r'title="(\d+) [a-z]*" style="[^"]*line-through', html)
    assert sorted(int(p) for p in struck) == [3, 4]
    # before the eviction fires nothing is struck, and tokens after the step are faded
    html = charts.token_stream_html(df, compute.evicted_at_step(10, [3], [5], [8], step=7), step=7)
    assert not re.findall(r'title="\d+ [a-z]*" style="[^"]*line-through', html)  # (the legend's is pos -1)
    assert len(re.findall(r"opacity:0.35", html)) == 2  # positions 8, 9


def test_step_from_selection():
    assert compute.step_from_selection({"selection": {"points": [{"x": 41.6, "y": 3}]}}, 100) == 42
    assert compute.step_from_selection({"selection": {"points": [{"x": 500}]}}, 100) == 99
    assert compute.step_from_selection({"selection": {"points": [{"x": "a"}, {"x": -3}]}}, 100) == 0
    assert compute.step_from_selection({"selection": {"points": []}}, 100) is None
    assert compute.step_from_selection(None, 100) is None


def test_ablation_figure_bars_for_whole_model_metrics_and_lines_per_layer():
    import pandas as pd
    from memento_lens.app import charts

    rows = [
        {
            "experiment": "restart",
            "variant": v,
            "direction": "",
            "layer": -1,
            "metric": "acc",
            "value": x,
            "ci_low": x - 0.1,
            "ci_high": x + 0.1,
        }
        for v, x in (("normal", 0.9), ("restart", 0.4))
    ]
    rows += [
        {
            "experiment": "patch",
            "variant": "restart_kv",
            "direction": "restart->normal",
            "layer": l,
            "metric": "kl",
            "value": 0.1 * l,
            "ci_low": 0.0,
            "ci_high": 1.0,
        }
        for l in range(3)
    ]
    df = pd.DataFrame(rows)
    bars = charts.ablation_figure(df, "acc")
    (bar,) = bars.data
    assert bar.type == "bar" and list(bar.y) == [0.9, 0.4] and list(bar.x) == ["restart / normal", "restart / restart"]
    lines = charts.ablation_figure(df, "kl")
    line = [t for t in lines.data if t.mode == "lines+markers"][0]
    assert list(line.x) == [0, 1, 2] and list(line.y) == pytest.approx([0.0, 0.1, 0.2])
