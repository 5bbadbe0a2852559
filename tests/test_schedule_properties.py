"""Property tests: the schedule on generated block structures and on random token streams."""

from __future__ import annotations

from conftest import TOKENS
from hypothesis import given, settings
from hypothesis import strategies as st
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.masks import visibility_mask
from memento_lens.runtime.occupancy import schedule_occupancy as occupancy
from memento_lens.runtime.schedule import EventKind, compute_schedule

B, E, S, X = 1, 2, 3, 4

configs = st.builds(
    BlockMaskingConfig,
    mask_delimiters=st.booleans(),
    keep_last_n_blocks=st.integers(-1, 3),
    compact_on_summary_end=st.booleans(),
    require_assistant_section=st.booleans(),
    restart_mode=st.booleans(),
    keep_last_block_for_answer=st.booleans(),
    max_block_tokens=st.integers(0, 4),
)


@st.composite
def structured(draw):
    """A well-formed stream: prompt, then (block, memento)*, then an answer; returns (ids, spans)."""
    ids = [0] * draw(st.integers(1, 3))
    spans = []
    for _ in range(draw(st.integers(0, 5))):
        bs = len(ids)
        ids += [B] + [5] * draw(st.integers(0, 4)) + [E]
        be = len(ids) - 1
        ids += [S] + [6] * draw(st.integers(0, 3)) + [X]
        spans.append((bs, be, be + 1, len(ids) - 1))
    ids += [7] * draw(st.integers(0, 3))
    return ids, spans


@given(structured(), st.booleans(), st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_keep_n_matches_fifo_oracle(stream, mask_delims, keep):
    """Oracle: block i is evicted at the summary_end of block i+keep, with the documented range."""
    ids, spans = stream
    cfg = BlockMaskingConfig(mask_delimiters=mask_delims, keep_last_n_blocks=keep)
    sched = compute_schedule(ids, cfg, TOKENS, prompt_len=1)
    expected = []
    for i, (bs, be, _, _) in enumerate(spans):
        if i + keep < len(spans):
            fire = spans[i + keep][3]
            rng = (bs, be + 1) if mask_delims else (bs + 1, be)
            expected.append((EventKind.COMPACT, fire, *rng, i))
    assert [(e.kind, e.position, e.start, e.end, e.block) for e in sched.events] == expected


@given(structured(), st.booleans())
@settings(max_examples=100, deadline=None)
def test_restart_rewinds_to_summary_start(stream, mask_delims):
    ids, spans = stream
    cfg = BlockMaskingConfig(mask_delimiters=mask_delims, restart_mode=True)
    sched = compute_schedule(ids, cfg, TOKENS, prompt_len=1)
    assert [(e.start, e.end, e.rewind_to, e.position) for e in sched.events] == [
        (bs, be + 1, ss, se) for bs, be, ss, se in spans
    ]


@given(st.lists(st.integers(0, 8), max_size=60), configs, st.integers(0, 10))
@settings(max_examples=300, deadline=None)
def test_random_streams_never_crash_and_stay_consistent(ids, cfg, prompt_len):
    prompt_len = min(prompt_len, len(ids))
    sched = compute_schedule(ids, cfg, TOKENS, prompt_len=prompt_len)
    occ = occupancy(sched)
    assert (occ >= 1).all() if len(ids) else len(occ) == 0
    for ev in sched.events:
        assert ev.position >= prompt_len
        assert 0 <= ev.start <= ev.end <= ev.position
    # ranges never overlap: a token is evicted at most once
    seen = set()
    for ev in sched.evictions:
        rng = set(range(ev.start, ev.end))
        assert not (rng & seen)
        seen |= rng
    if not cfg.restart_mode:
        vis = visibility_mask(sched)
        assert [int(vis[q].sum()) for q in range(len(ids))] == occ.tolist()
