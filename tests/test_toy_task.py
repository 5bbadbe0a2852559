"""The toy task generator: layout positions and running sums."""

from __future__ import annotations

import numpy as np
import pytest
from memento_lens.runtime.toy.task import DIGIT0, TOY_TOKENS, ToyLayout, encode, sample, sum_digits


def test_layout_positions_cover_sequence():
    lay = ToyLayout()
    assert lay.length == 122 and lay.stride == 12
    seen = [0, lay.length - 1]
    for b in range(lay.n_blocks):
        seen += [lay.block_start(b), *lay.block_content(b), lay.block_end(b), *lay.memento_span(b)]
    assert sorted(seen) == list(range(lay.length))


def test_sums_are_running_sums():
    batch = sample(50, 0)
    lay = batch.layout
    for i in range(50):
        total = 0
        for b in range(lay.n_blocks):
            digits = batch.token_ids[i, lay.block_content(b)] - DIGIT0
            np.testing.assert_array_equal(digits, batch.digits[i, b])
            total += digits.sum()
            memento = batch.token_ids[i, lay.memento(b)] - DIGIT0
            assert int("".join(map(str, memento))) == total == batch.sums[i, b]
            assert batch.token_ids[i, lay.block_start(b)] == TOY_TOKENS.block_start
            assert batch.token_ids[i, lay.summary_end(b)] == TOY_TOKENS.summary_end


def test_sum_digits_zero_padded():
    np.testing.assert_array_equal(sum_digits(np.array([7, 45, 450]), 3), [[0, 0, 7], [0, 4, 5], [4, 5, 0]])


def test_sampling_is_seeded():
    np.testing.assert_array_equal(sample(4, 1).token_ids, sample(4, 1).token_ids)
    assert not np.array_equal(sample(4, 1).token_ids, sample(4, 2).token_ids)


def test_encode_rejects_bad_digits():
    with pytest.raises(ValueError, match="0..9"):
        encode(np.full((1, 10, 5), 10))
    with pytest.raises(ValueError, match="must be"):
        encode(np.zeros((1, 3, 5)))
