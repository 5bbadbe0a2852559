"""What a query sees and its attention mass by role (analyses/attention.py) on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memento_lens.analyses.attention import (
    MASS_CATEGORIES,
    attention_mass_by_role,
    category_codes,
    edges,
    evicted_at_step,
    evicted_spans,
    head_mass_summary,
    mass_categories,
    pattern_difference,
    query_key_pattern,
    visible_at_step,
)
from memento_lens.runtime.masks import visible_at
from memento_lens.runtime.schedule import EventKind, EvictionEvent


def test_evicted_at_step_takes_effect_at_the_firing_position():
    # one event fired at position 6 evicting [1, 4); an empty range (forced block end) at 3
    starts, ends, positions = [1, 3], [4, 3], [6, 3]
    assert not evicted_at_step(8, starts, ends, positions, step=5).any()
    gone = evicted_at_step(8, starts, ends, positions, step=6)
    assert gone.tolist() == [False, True, True, True, False, False, False, False]
    assert evicted_at_step(8, starts, ends, positions, step=7).tolist() == gone.tolist()


def test_evicted_at_step_accumulates_and_clips():
    gone = evicted_at_step(10, [1, 5], [3, 20], [4, 8], step=9)
    assert gone.nonzero()[0].tolist() == [1, 2, 5, 6, 7, 8, 9]


def test_visible_at_step_is_causal_minus_evicted():
    vis = visible_at_step(8, [1], [4], [6], step=6)
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
    visible = visible_at_step(13, [3], [5], [8], step=11)
    w = np.zeros(13)
    w[[0, 1]] = 0.1, 0.1  # prompt
    w[2] = 0.05  # delimiter
    w[7] = 0.3  # memento
    w[[10, 11]] = 0.2, 0.25  # current block
    m = attention_mass_by_role(w, ROLES, BLOCKS, 11, visible)
    assert m["prompt"] == pytest.approx(0.2)
    assert m["mementos"] == pytest.approx(0.3)
    assert m["current block"] == pytest.approx(0.45)
    assert m["delimiters"] == pytest.approx(0.05)
    assert m["other visible blocks"] == 0 and m["evicted"] == 0 and m["answer"] == 0
    assert sum(m.values()) == pytest.approx(w.sum())


def test_attention_mass_flags_weight_on_evicted_positions_and_averages_heads():
    visible = visible_at_step(13, [3], [5], [8], step=11)
    w = torch.zeros(2, 13)
    w[0, 3] = 1.0  # head 0 all on an evicted position (a leak)
    w[1, 4] = 0.5
    w[1, 12] = 0.5  # future position (answer, after the query): not visible either
    m = attention_mass_by_role(w, ROLES, BLOCKS, 11, visible)
    assert m["evicted"] == pytest.approx(0.75)  # mean over heads of (1.0, 0.5)
    assert m["future"] == pytest.approx(0.25)  # mean over heads of (0, 0.5)
    assert m["current block"] == 0


def test_other_visible_block_when_query_is_outside_any_block():
    visible = np.ones(13, dtype=bool)
    cats = mass_categories(ROLES, BLOCKS, 12, visible)  # query is an answer token
    assert cats[3] == "other visible blocks" and cats[10] == "other visible blocks"
    assert cats[12] == "answer"


# -- query x key patterns ---------------------------------------------------------------------------------
# 6 tokens; block [1, 3) evicted by an event at 4 (so queries 4 and 5 do not see it)
EVENTS = (EvictionEvent(EventKind.COMPACT, 4, 1, 3, 0),)


def _vis(q):
    return visible_at(EVENTS, q, 6)


def _rows():
    """Two heads; query 2 sees 0..2, queries 4 and 5 see 0, 3..q. Head 1 puts exactly 0 on key 0."""
    return {
        2: np.array([[0.5, 0.25, 0.25, 0, 0, 0], [0.0, 0.5, 0.5, 0, 0, 0]]),
        4: np.array([[0.2, 0, 0, 0.3, 0.5, 0], [0.0, 0, 0, 0.5, 0.5, 0]]),
        5: np.array([[0.1, 0, 0, 0.2, 0.3, 0.4], [0.0, 0, 0, 0.2, 0.2, 0.6]]),
    }


def test_query_key_pattern_keeps_not_visible_apart_from_zero():
    p = query_key_pattern(_rows(), _vis, edges(0, 6), edges(0, 6))
    assert p.weights.shape == (2, 6, 6) and not p.binned
    h1 = p.head(1)
    assert h1[2].tolist()[:3] == [0.0, 0.5, 0.5] and np.isnan(h1[2, 3:]).all()  # future: not visible
    assert h1[4, 0] == 0.0  # visible, given zero attention: 0, not NaN
    assert np.isnan(h1[4, 1:3]).all() and np.isnan(h1[5, 1:3]).all()  # evicted from step 4 on
    assert np.isnan(h1[[0, 1, 3]]).all()  # queries not captured
    assert p.n_queries.tolist() == [0, 0, 1, 0, 1, 1]
    np.testing.assert_allclose(p.head(None)[5], [0.05, np.nan, np.nan, 0.2, 0.25, 0.5])
    # visible cells equal the captured weights exactly
    for q, w in _rows().items():
        v = _vis(q)
        np.testing.assert_array_equal(p.weights[:, q, v], w[:, v].astype(np.float32))


def test_query_key_pattern_bins_sum_keys_and_average_queries():
    p = query_key_pattern(_rows(), _vis, np.array([0, 4, 6]), np.array([0, 3, 6]))
    assert p.binned and p.n_queries.tolist() == [1, 2]
    # head 0: row [0,4) is query 2 alone; row [4,6) the mean of queries 4 and 5
    np.testing.assert_allclose(p.weights[0], [[1.0, np.nan], [0.15, 0.85]])
    # a weight on a hidden position is left out (a leak is not drawn as visible mass)
    leaky = dict(_rows())
    leaky[4] = leaky[4] + np.array([0, 0.7, 0, 0, 0, 0])
    assert np.allclose(
        query_key_pattern(leaky, _vis, np.array([0, 4, 6]), np.array([0, 3, 6])).weights, p.weights, equal_nan=True
    )


def test_edges_per_position_or_bins():
    assert edges(3, 7).tolist() == [3, 4, 5, 6, 7]
    e = edges(0, 4000, 100)
    assert e[0] == 0 and e[-1] == 4000 and len(e) == 101


def test_pattern_difference_is_nan_where_either_is_hidden():
    a = query_key_pattern(_rows(), _vis, edges(0, 6), edges(0, 6))
    other = {q: w * 0.5 for q, w in _rows().items()}
    # the restart world hides key 3 from query 5 too
    b = query_key_pattern(
        other, lambda q: _vis(q) & (np.arange(6) != 3) if q == 5 else _vis(q), edges(0, 6), edges(0, 6)
    )
    d = pattern_difference(a, b)
    np.testing.assert_allclose(d.weights[0, 5, [0, 4, 5]], [0.05, 0.15, 0.2])
    assert np.isnan(d.weights[0, 5, 3]) and np.isnan(d.weights[0, 4, 1])
    with pytest.raises(ValueError, match="different query/key windows"):
        pattern_difference(a, query_key_pattern(other, _vis, edges(0, 5), edges(0, 6)))


def test_evicted_spans_clip_and_start_where_the_rule_hides():
    evs = [
        EvictionEvent(EventKind.COMPACT, 4, 1, 3, 0),
        EvictionEvent(EventKind.FORCED_BLOCK_END, 9, 9, 9, None),  # empty range: hides nothing
        EvictionEvent(EventKind.RESTART, 20, 8, 15, 1, rewind_to=16),
    ]
    spans = evicted_spans(evs, 2, 30, 0, 30)
    assert [(s.start, s.end, s.from_step, s.block) for s in spans] == [(2, 3, 4, 0), (8, 15, 16, 1)]
    assert evicted_spans(evs, 0, 30, 0, 4) == []  # nothing is hidden before step 4
    assert [(s.from_step) for s in evicted_spans(evs, 0, 30, 10, 30)] == [10, 16]  # clipped to the query window


def test_head_mass_summary_averages_each_heads_mass_by_role():
    roles = ["prompt", "block", "block", "memento", "answer", "answer"]
    blocks = [-1, 0, 0, 0, -1, -1]
    rows = {(0, q): w for q, w in _rows().items() if q >= 4}
    t = head_mass_summary(rows, roles, blocks, _vis)
    assert t[["layer", "head", "n_queries"]].values.tolist() == [[0, 0, 2], [0, 1, 2]]
    h0 = t.iloc[0]
    assert h0["prompt"] == pytest.approx(0.15) and h0["mementos"] == pytest.approx(0.25)
    assert h0["answer"] == pytest.approx(0.6) and h0["evicted"] == 0 and h0["future"] == 0
    assert t.iloc[1]["prompt"] == 0.0


def test_category_codes_equal_mass_categories_for_every_query():
    roles = ["prompt", "block", "block", "delimiter", "memento", "block", "block", "odd", "answer"]
    blocks = [-1, 0, 0, 0, 0, 1, 1, 1, -1]
    evs = (EvictionEvent(EventKind.COMPACT, 5, 1, 3, 0),)
    qs = list(range(9))
    vis = np.stack([visible_at(evs, q, 9) for q in qs])
    codes = category_codes(roles, blocks, qs, vis)
    for q in qs:
        want = mass_categories(roles, blocks, q, vis[q])
        assert [MASS_CATEGORIES[c] for c in codes[q]] == list(want)
