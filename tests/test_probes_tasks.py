"""The passcode task interface: the toy implementation's samples, worlds, positions and text ceiling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from memento_lens.probes.features import Condition, ProbeInputError
from memento_lens.probes.tasks import (
    ALL_WORLDS,
    PasscodeTask,
    ToyPasscodeTask,
    digit_sum_ceiling,
    hide_delimiters,
    same_sum_tuples,
)
from memento_lens.runtime.toy.task import DIGIT0, ToyLayout


def test_digit_sum_ceiling_matches_brute_force():
    for n_digits in (1, 2, 3):
        codes = np.array(list(itertools.product(range(10), repeat=n_digits)))
        sums = codes.sum(1)
        hits = 0
        for s in np.unique(sums):
            for pos in range(n_digits):
                hits += np.bincount(codes[sums == s, pos], minlength=10).max()
        assert digit_sum_ceiling(n_digits) == pytest.approx(hits / (len(codes) * n_digits))
    assert digit_sum_ceiling(1) == 1.0
    assert digit_sum_ceiling(5) == pytest.approx(0.16, abs=0.001)


def test_toy_task_places_the_passcode_in_the_target_block():
    task = ToyPasscodeTask(target=2)
    assert isinstance(task, PasscodeTask)
    s = task.samples(50, seed=3)
    lay = task.layout
    np.testing.assert_array_equal(s.token_ids[:, lay.block_content(2)] - DIGIT0, s.labels)
    again = task.samples(50, seed=3)
    np.testing.assert_array_equal(s.token_ids, again.token_ids)
    assert s.labels.shape == (50, 5)


def test_toy_worlds_differ_only_in_what_mementos_see_of_their_block():
    task = ToyPasscodeTask()
    lay = task.layout
    normal, restart = task.visibility("normal").numpy(), task.visibility("restart").numpy()
    m = lay.memento(1)
    block = lay.block_content(1)
    assert normal[np.ix_(m, block)].all()  # the memento is written while its block is visible
    assert not restart[np.ix_(m, block)].any()  # restart: recomputed without it
    assert not normal[np.ix_(lay.memento(2), block)].any()  # keep 0: later tokens never see it
    with pytest.raises(ProbeInputError, match="world"):
        task.visibility("vanilla")


def test_toy_text_channel_and_ceiling():
    task = ToyPasscodeTask(positions="digits", layout=ToyLayout())
    np.testing.assert_array_equal(task.memento_positions(3), task.layout.memento(3))
    assert len(task.text_positions(3)) == 4 * 3
    assert task.text_ceiling(Condition("causal_control", -1, 0)) == pytest.approx(0.1)
    assert task.text_ceiling(Condition("masked", 2, 3)) == pytest.approx(digit_sum_ceiling(5))
    with pytest.raises(ProbeInputError, match="--target-block"):
        ToyPasscodeTask(target=10)


# -- reference worlds (issue 18 item 3) -------------------------------------------------------------------------
def test_hide_delimiters_on_a_hand_built_mask():
    vis = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    out = hide_delimiters(vis, [1, 2], 4)
    assert vis[5, 1] and vis[4, 2]  # the input is untouched
    expect = vis.clone()
    expect[4:, 1] = False
    expect[4:, 2] = False
    assert torch.equal(out, expect)
    batched = hide_delimiters(vis[None].expand(3, 6, 6), [0], 3)
    assert batched.shape == (3, 6, 6) and not batched[:, 3:, 0].any() and batched[:, :3, 0].all()
    with pytest.raises(ValueError, match="precede"):
        hide_delimiters(vis, [4], 4)
    with pytest.raises(ValueError, match="outside"):
        hide_delimiters(vis, [7], 4)


def test_same_sum_tuples_keep_the_sum_and_are_uniform_among_the_others():
    rng = np.random.default_rng(0)
    d = rng.integers(0, 10, size=(5000, 5))
    o = same_sum_tuples(d, rng)
    np.testing.assert_array_equal(o.sum(1), d.sum(1))
    assert not (o == d).all(1).any()  # never the block itself (no sum 0 or 45 drawn here)
    np.testing.assert_array_equal(same_sum_tuples(np.zeros((2, 5), int), rng), np.zeros((2, 5)))  # only tuple
    # sum 1 with 3 digits: (1,0,0) has exactly two others, drawn about equally often
    o = same_sum_tuples(np.tile([[1, 0, 0]], (4000, 1)), rng)
    keys, counts = np.unique(o @ [100, 10, 1], return_counts=True)
    assert keys.tolist() == [1, 10] and abs(counts[0] - counts[1]) < 300


@pytest.mark.parametrize("layout", [ToyLayout(), ToyLayout(n_blocks=4, passcode_digits=5)])
def test_toy_reference_worlds(layout):
    task = ToyPasscodeTask(layout=layout)
    assert task.worlds == ALL_WORLDS
    s = task.samples(400, seed=1)
    lay, t = task.layout, task.target
    block = np.concatenate([lay.block_content(t), lay.passcode(t)])
    pass_pos = lay.passcode(t) if lay.passcode_digits else lay.block_content(t)
    others = np.setdiff1d(np.arange(s.token_ids.shape[1]), block)
    for world in ("same_sum", "foreign"):
        ids = task.world_tokens(s, world, seed=5)
        np.testing.assert_array_equal(ids[:, others], s.token_ids[:, others])  # memento text and the rest kept
        np.testing.assert_array_equal(ids, task.world_tokens(s, world, seed=5))  # deterministic in its seed
        assert not np.array_equal(ids, task.world_tokens(s, world, seed=6))
        # the passcode is gone: the world's passcode digits agree with the label at about chance
        agree = (ids[:, pass_pos] - DIGIT0 == s.labels).mean()
        assert agree < 0.2
        assert torch.equal(task.visibility(world), task.visibility("normal"))
    same = task.world_tokens(s, "same_sum", 5)
    np.testing.assert_array_equal(same[:, lay.block_content(t)].sum(1), s.token_ids[:, lay.block_content(t)].sum(1))
    if not lay.passcode_digits:  # foreign changes the block only, so the sums (memento text) no longer match it
        foreign = task.world_tokens(s, "foreign", 5)
        assert (foreign[:, lay.block_content(t)].sum(1) != s.token_ids[:, lay.block_content(t)].sum(1)).mean() > 0.8
    np.testing.assert_array_equal(task.world_tokens(s, "delimiter_hidden", 5), s.token_ids)
    normal, hidden = task.visibility("normal"), task.visibility("delimiter_hidden")
    delims = [lay.block_start(t), lay.block_end(t)]
    after = lay.summary_end(t) + 1
    assert normal[after:, delims].all() and not hidden[after:, delims].any()  # kept delimiters, then hidden
    diff = normal != hidden
    diff[after:, delims] = False
    assert not diff.any()  # nothing else changes


def test_default_world_interface_and_unsupported_worlds():
    class Minimal(ToyPasscodeTask):
        @property
        def worlds(self):
            return PasscodeTask.worlds.fget(self)

    task = Minimal()
    s = task.samples(10, 0)
    np.testing.assert_array_equal(PasscodeTask.world_tokens(task, s, "restart", 0), s.token_ids)
    with pytest.raises(ProbeInputError, match="cannot build 'same_sum'"):
        task.world_tokens(s, "same_sum", 0)
