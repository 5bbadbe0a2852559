"""What a query sees and its attention mass by role (analyses/attention.py) on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memento_lens.analyses.attention import attention_mass_by_role, evicted_at_step, mass_categories, visible_at_step


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
