"""Eviction policies (runtime/policies/): the config -> policy map, and a new policy as one class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pytest
from memento_lens.analyses.kv import fast_schedule
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds
from memento_lens.runtime.events import EventKind, EvictionEvent
from memento_lens.runtime.policies import (
    DeferredFlush,
    EvictionPolicy,
    Memento,
    Restart,
    TrackerView,
    Vanilla,
    policy_for,
)
from memento_lens.runtime.schedule import BlockTracker, compute_schedule

pytestmark = pytest.mark.unit

B, E, S, X, THINK_END = 1, 2, 3, 4, 9
TOKENS = MementoTokenIds(block_start=B, block_end=E, summary_start=S, summary_end=X, think_end=THINK_END)
# pos:    0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19
STREAM = [0, B, 5, 6, E, S, 7, X, B, 5, 5, E, S, 8, X, 6, THINK_END, 7, 7, 7]
CFG = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=-1)  # the config alone would never evict


@dataclass(frozen=True)
class FlushAtAnswer(EvictionPolicy):
    """A new policy, in one class: keep every block while thinking, evict them all when ``</think>`` starts
    the answer (a token no built-in policy or tracker branch knows about)."""

    name = "flush_at_answer"
    mask_delimiters: bool = True

    def reacts_to(self, tokens: MementoTokenIds) -> frozenset[int]:
        return frozenset({tokens.think_end})

    def on_token(self, tracker: TrackerView, pos: int, token_id: int) -> Sequence[EvictionEvent]:
        return [
            tracker.evict_oldest(pos, EventKind.COMPACT, with_delimiters=self.mask_delimiters)
            for _ in tracker.pending_blocks
        ]


def _spans(sched):
    return [(e.kind, e.position, e.start, e.end, e.block) for e in sched.events]


def test_new_policy_runs_through_both_schedules():
    policy = FlushAtAnswer()
    slow = compute_schedule(STREAM, CFG, TOKENS, prompt_len=1, policy=policy)
    fast = fast_schedule(np.asarray(STREAM), CFG, TOKENS, prompt_len=1, policy=policy)
    assert _spans(slow) == [(EventKind.COMPACT, 16, 1, 5, 0), (EventKind.COMPACT, 16, 8, 12, 1)]
    assert fast == slow
    # the fast path fed the tracker </think> because the policy asked for it
    assert THINK_END in BlockTracker(CFG, TOKENS, policy=policy).relevant_tokens
    assert THINK_END not in BlockTracker(CFG, TOKENS).relevant_tokens


def test_policy_is_called_only_for_what_it_reacts_to():
    calls = []

    @dataclass(frozen=True)
    class Spy(EvictionPolicy):
        def reacts_to(self, tokens):
            return frozenset({tokens.block_end})

        def on_token(self, tracker, pos, token_id):
            calls.append((pos, token_id))
            return ()

    compute_schedule(STREAM, CFG, TOKENS, prompt_len=5, policy=Spy())
    assert calls == [(11, E)]  # the prompt's <|block_end|> at 4 never reaches a policy


def test_one_policy_object_serves_many_sequences():
    policy = Memento(keep_last_n=0)
    a, b = BlockTracker(CFG, TOKENS, 1, policy=policy), BlockTracker(CFG, TOKENS, 1, policy=policy)
    got_a = [ev for tok in STREAM for ev in a.step(tok)]
    got_b = [ev for tok in STREAM[:8] for ev in b.step(tok)]
    assert [e.block for e in got_a] == [0, 1] and [e.block for e in got_b] == [0]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"keep_last_n_blocks": -1}, Vanilla()),
        ({"keep_last_n_blocks": -1, "keep_last_block_for_answer": True}, Vanilla()),
        ({"compact_on_summary_end": False}, Vanilla()),
        ({"keep_last_n_blocks": 2, "mask_delimiters": True}, Memento(keep_last_n=2, mask_delimiters=True)),
        ({"restart_mode": True, "keep_last_n_blocks": 1}, Restart(keep_last_n=1)),
        ({"keep_last_block_for_answer": True}, DeferredFlush()),
        ({"keep_last_block_for_answer": True, "compact_on_summary_end": False}, DeferredFlush()),
        ({"keep_last_block_for_answer": True, "restart_mode": True}, DeferredFlush(restart=True)),
        ({"keep_last_block_for_answer": True, "keep_last_n_blocks": 1}, Memento(keep_last_n=1)),
    ],
)
def test_policy_for_config(fields, expected):
    assert policy_for(BlockMaskingConfig(**{"mask_delimiters": False, **fields})) == expected


def test_policy_that_evicts_with_nothing_queued_is_named():
    @dataclass(frozen=True)
    class Eager(EvictionPolicy):
        def reacts_to(self, tokens):
            return frozenset({tokens.block_start})

        def on_token(self, tracker, pos, token_id):
            return [tracker.evict_oldest(pos, EventKind.COMPACT, with_delimiters=False)]

    with pytest.raises(ValueError, match="position 1 but no completed block is queued"):
        compute_schedule(STREAM, CFG, TOKENS, prompt_len=1, policy=Eager())


def test_skip_to_refuses_going_back_and_counted_tokens():
    tr = BlockTracker(CFG, TOKENS)
    tr.skip_to(5)
    with pytest.raises(ValueError, match="already at position 5"):
        tr.skip_to(3)
    capped = BlockTracker(BlockMaskingConfig(mask_delimiters=False, max_block_tokens=2), TOKENS)
    assert capped.relevant_tokens is None
    with pytest.raises(ValueError, match="max_block_tokens"):
        capped.skip_to(1)
