"""Display helpers of the app (colours, probe-row selection, chart clicks) and its HTML/figure builders.

The science the pages show is tested in test_analyses_attention.py, test_analyses_residue.py, test_analyses_kv.py."""

from __future__ import annotations

import pytest
from memento_lens.analyses.attention import evicted_at_step
from memento_lens.app import compute


def test_role_colors_one_distinct_colour_per_role():
    colors = compute.role_colors()
    assert set(colors) == set(compute.ROLES)
    assert len(set(colors.values())) == len(colors)


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
    gone = evicted_at_step(10, [3], [5], [8], step=9)
    html = charts.token_stream_html(df, gone, step=9)
    assert "<b>" not in html.replace("<b>prompt</b>", "").replace("<b>answer</b>", "") and "&lt;b&gt;" in html
    row = re.search(r"<tr><td[^>]*>0</td>(.*?)</tr>", html).group(1)
    block_cell, memento_cell = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert ">a<" in block_cell and ">M<" in memento_cell and "summary_start" in memento_cell
    struck = re.findall(r'title="(\d+) [a-z]*" style="[^"]*line-through', html)
    assert sorted(int(p) for p in struck) == [3, 4]
    # before the eviction fires nothing is struck, and tokens after the step are faded
    html = charts.token_stream_html(df, evicted_at_step(10, [3], [5], [8], step=7), step=7)
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


def test_decode_token_turns_bpe_markers_into_text():
    from memento_lens.app.compute import decode_token, token_label

    assert decode_token("ĠtheĠproblem") == " the problem"
    assert decode_token("Ċ") == "\n" and decode_token("ĊĊ") == "\n\n"
    assert decode_token("ĠcafÃ©") == " café" and decode_token("ä½ł") == "你"
    assert decode_token("▁the") == " the" and decode_token("<0x0A>") == "\n"  # SentencePiece
    for plain in (" add", "<|block_start|>", "12", "é", "sum"):  # already text: unchanged
        assert decode_token(plain) == plain
    assert token_label(" the\n", 10) == "·the⏎" and token_label("abcdefgh", 4) == "abc…"


def test_query_from_selection_reads_the_row():
    from memento_lens.app.compute import query_from_selection

    assert query_from_selection({"selection": {"points": [{"x": 3, "y": 7.2}]}}, 100) == 7
    assert query_from_selection({"selection": {"points": [{"y": 500}]}}, 100) == 99
    assert query_from_selection({"selection": {"points": []}}, 100) is None
    assert query_from_selection(None, 100) is None


def test_token_stream_and_strip_show_decoded_text_not_bpe_markers():
    import pandas as pd
    from memento_lens.app.charts import token_stream_html, token_strip_figure

    toks = pd.DataFrame(
        {
            "pos": [0, 1, 2, 3],
            "token": ["Ġthe", "Ġproblem", "Ċ", "ĠcafÃ©"],
            "role": ["prompt", "prompt", "prompt", "prompt"],
            "block": [-1, -1, -1, -1],
        }
    )
    import numpy as np

    gone = np.zeros(4, dtype=bool)
    html = token_stream_html(toks, gone, 3)
    assert "Ġ" not in html and "Ċ" not in html and "Ã" not in html
    assert "> the</span>" in html and "> problem</span>" in html and "> café</span>" in html and "⏎" in html
    strip = token_strip_figure(toks, gone, 3)
    assert list(strip.data[0].text) == ["·the", "·problem", "⏎", "·café"]
