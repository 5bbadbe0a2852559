"""The one visibility rule (runtime/masks.py) and the seam to what the app draws from a run's events table."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from memento_lens.analyses.attention import evicted_at_step, visible_at_step
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.masks import events_from_table, evicted_at, hides, visibility_mask, visible_at
from memento_lens.runtime.rundir.writer import trace_tables
from memento_lens.runtime.schedule import EventKind, EvictionEvent, compute_schedule
from memento_lens.runtime.trace import Trace

pytestmark = pytest.mark.unit

B, E, S, X = 1, 2, 3, 4
# pos:    0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
STREAM = [0, B, 5, 6, E, S, 7, X, B, 5, 5, E, S, 8, X, B, 6, E, S, 9, 9, X, 9, 9]

CONFIGS = {
    "restart": BlockMaskingConfig(mask_delimiters=False, restart_mode=True),
    "restart-keep1": BlockMaskingConfig(mask_delimiters=False, restart_mode=True, keep_last_n_blocks=1),
    "keep0": BlockMaskingConfig(mask_delimiters=False),
    "keep1": BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=1),
    "keep2-delims": BlockMaskingConfig(mask_delimiters=True, keep_last_n_blocks=2),
    "deferred": BlockMaskingConfig(mask_delimiters=False, keep_last_block_for_answer=True),
}


def _events_frame_as_stored(sched, tokens) -> pd.DataFrame:
    """The run's events table as a reader gets it: the one builder, through Parquet and back."""
    trace = Trace("t0", list(STREAM), 1, {})
    frame = trace_tables(trace, sched, tokens, sched.config.mode, "test", 0)["events"]
    buf = io.BytesIO()
    frame.to_parquet(buf)
    return pd.read_parquet(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_app_visibility_equals_runtime_mask(tokens, name):
    sched = compute_schedule(STREAM, CONFIGS[name], tokens, prompt_len=1)
    assert sched.evictions, "the stream must evict under every config tested"
    mask = visibility_mask(sched).numpy()
    ev = _events_frame_as_stored(sched, tokens)
    from_table = events_from_table(ev, trace="t0")
    assert from_table == tuple(sched.events)
    n = len(STREAM)
    for step in range(n):
        assert visible_at(sched, step, n).tolist() == mask[step].tolist(), step
        assert visible_at(from_table, step, n).tolist() == mask[step].tolist(), step
        app = visible_at_step(n, ev["start"], ev["end"], ev["position"], step, ev["rewind_to"])
        assert app.tolist() == mask[step].tolist(), step
        gone = evicted_at_step(n, ev["start"], ev["end"], ev["position"], step, ev["rewind_to"])
        assert (app | gone | (np.arange(n) > step)).all() and not (app & gone).any()


def test_restart_hides_block_from_summary_start(tokens):
    sched = compute_schedule(STREAM, CONFIGS["restart"], tokens, prompt_len=1)
    first = sched.evictions[0]
    assert (first.position, first.start, first.end, first.rewind_to) == (7, 1, 5, 5)
    n = len(STREAM)
    assert visible_at(sched, 4, n)[1:5].all()  # inside the block: all of it visible
    assert not visible_at(sched, 5, n)[1:5].any()  # <|summary_start|>: recomputed without the block
    assert visible_at(sched, 5, n)[[0, 5]].all()
    # the firing-position rule (rewind_to ignored) would still show the block at 5 and 6
    assert evicted_at_step(n, [1], [5], [7], 6).sum() == 0
    assert evicted_at_step(n, [1], [5], [7], 6, rewind_to=[5]).sum() == 4


def test_hides_is_the_rule():
    compact = EvictionEvent(EventKind.COMPACT, 7, 2, 4, 0)
    restart = EvictionEvent(EventKind.RESTART, 7, 1, 5, 0, rewind_to=5)
    warning = EvictionEvent(EventKind.WARNING, 3, 3, 3, None, message="x")
    assert [hides(compact, s) for s in (6, 7, 8)] == [False, True, True]
    assert [hides(restart, s) for s in (4, 5, 7)] == [False, True, True]
    assert not hides(warning, 10)
    assert evicted_at([compact, restart, warning], 6, 10).tolist() == [False, True, True, True, True] + [False] * 5


def test_events_from_table_reads_old_runs_and_nulls():
    old = {"kind": ["compact", "warning"], "position": [7, 3], "start": [2, 3], "end": [4, 3], "block": [0, -1]}
    evs = events_from_table(old)
    assert evs[0] == EvictionEvent(EventKind.COMPACT, 7, 2, 4, 0)
    assert evs[1].block is None and evs[1].rewind_to is None
    df = pd.DataFrame({**old, "rewind_to": pd.array([5, None], dtype="Int64"), "message": [None, "bad"]})
    df["trace"] = ["a", "b"]
    assert events_from_table(df)[0].rewind_to == 5
    assert events_from_table(df, trace="b") == (EvictionEvent(EventKind.WARNING, 3, 3, 3, None, message="bad"),)
    assert events_from_table(pd.DataFrame({**old, "rewind_to": [np.nan, np.nan]}))[0].rewind_to is None
