"""The passcode task interface: the toy implementation's samples, worlds, positions and text ceiling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from memento_lens.probes.features import Condition, ProbeInputError
from memento_lens.probes.tasks import PasscodeTask, ToyPasscodeTask, digit_sum_ceiling
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
