"""The eviction schedule against hand-worked streams (reference-engine semantics)."""

from __future__ import annotations

import pytest
from memento_lens.runtime.config import BlockMaskingConfig, ConfigError
from memento_lens.runtime.masks import visibility_mask
from memento_lens.runtime.occupancy import schedule_occupancy as occupancy
from memento_lens.runtime.schedule import EventKind, compute_schedule

B, E, S, X = 1, 2, 3, 4  # block_start, block_end, summary_start, summary_end
# pos:    0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17
STREAM = [0, B, 5, 6, E, S, 7, X, B, 5, 5, E, S, 8, X, 9, 9, 9]


def spans(sched):
    return [(e.kind.value, e.position, e.start, e.end, e.block) for e in sched.events]


def test_keep0_keeps_delimiters(tokens):
    s = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=False), tokens, prompt_len=1)
    assert spans(s) == [("compact", 7, 2, 4, 0), ("compact", 14, 9, 11, 1)]


def test_keep0_masks_delimiters(tokens):
    s = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=True), tokens, prompt_len=1)
    assert spans(s) == [("compact", 7, 1, 5, 0), ("compact", 14, 8, 12, 1)]


def test_vanilla_never_evicts(tokens):
    s = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=-1), tokens, 1)
    assert s.events == ()
    assert list(occupancy(s)) == list(range(1, len(STREAM) + 1))


def test_keep1_evicts_oldest_on_second_summary_end(tokens):
    s = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=1), tokens, 1)
    assert spans(s) == [("compact", 14, 2, 4, 0)]


def test_restart_evicts_delimiters_and_rewinds(tokens):
    s = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=False, restart_mode=True), tokens, 1)
    assert spans(s) == [("restart", 7, 1, 5, 0), ("restart", 14, 8, 12, 1)]
    assert [e.rewind_to for e in s.events] == [5, 12]
    vis = visibility_mask(s)
    assert not vis[5, 2] and not vis[6, 1]  # memento rows recomputed without the block
    assert vis[5, 0] and vis[6, 5]


def test_deferred_flush_for_answer(tokens):
    cfg = BlockMaskingConfig(mask_delimiters=False, keep_last_block_for_answer=True)
    s = compute_schedule(STREAM, cfg, tokens, 1)
    # block 0 flushed on block 1's <|block_start|>; block 1 stays for the answer
    assert spans(s) == [("deferred_flush", 8, 2, 4, 0)]


def test_prompt_never_fires(tokens):
    s = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=False), tokens, prompt_len=8)
    # block 0 completed inside the prompt: queued, evicted at the next generated <|summary_end|>
    assert spans(s) == [("compact", 14, 2, 4, 0)]


def test_occupancy_and_mask_agree(tokens):
    s = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=False), tokens, 1)
    occ = occupancy(s)
    assert occ[6] == 7 and occ[7] == 6 and occ[-1] == len(STREAM) - 4
    vis = visibility_mask(s)
    assert [int(vis[q].sum()) for q in range(len(STREAM))] == list(occ)


def test_max_block_tokens_forced_end(tokens):
    cfg = BlockMaskingConfig(mask_delimiters=False, max_block_tokens=2)
    s = compute_schedule(STREAM, cfg, tokens, 1)
    assert ("forced_block_end", 4, 4, 4, 0) in spans(s)
    assert ("forced_block_end", 11, 11, 11, 1) in spans(s)


def test_max_block_tokens_violation_warns(tokens):
    cfg = BlockMaskingConfig(mask_delimiters=False, max_block_tokens=1)
    s = compute_schedule(STREAM, cfg, tokens, 1)
    assert any(e.kind == EventKind.WARNING and e.position == 3 for e in s.events)


@pytest.mark.parametrize(
    "stream,needle",
    [
        ([0, E, 5], "no open block"),
        ([0, S, 5, X], "no closed block"),
        ([0, B, 5, B, 6, E, E], "nested"),
        ([0, B, 5, 6], "never closed"),
    ],
)
def test_malformed_streams_warn(tokens, stream, needle):
    s = compute_schedule(stream, BlockMaskingConfig(mask_delimiters=False), tokens, 1)
    assert any(needle in (e.message or "") for e in s.warnings)


def test_assistant_section_required(tokens):
    from memento_lens.runtime.config import MementoTokenIds

    tok = MementoTokenIds(1, 2, 3, 4, im_start=20, assistant=21)
    prompt = [20, 30, B, 5, E, S, 6, X, 20, 21]  # blocks in the user turn are ignored
    gen = [B, 5, 5, E, S, 7, X]
    s = compute_schedule(prompt + gen, BlockMaskingConfig(mask_delimiters=False), tok, len(prompt))
    assert spans(s) == [("compact", 16, 11, 13, 0)]


def test_mask_delimiters_required():
    with pytest.raises(ConfigError, match="mask_delimiters"):
        BlockMaskingConfig.from_dict({"keep_last_n_blocks": 0})
    with pytest.raises(ConfigError, match="keep_last_n_blocks"):
        BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=-2)
