"""The restart ablation: evict the block with its delimiters and recompute the memento's KV without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import MementoTokenIds
from ..events import EventKind, EvictionEvent
from .base import EvictionPolicy, TrackerView, over_keep


@dataclass(frozen=True)
class Restart(EvictionPolicy):
    """On ``<|summary_end|>``: evict the oldest completed block (delimiters included) while more than
    ``keep_last_n`` are queued, rewinding to the ``<|summary_start|>`` of the memento that just ended, whose
    KV is then recomputed with the block gone (the paper's restart world; the reference engine's rule).
    """

    name = "restart"
    keep_last_n: int = 0

    def reacts_to(self, tokens: MementoTokenIds) -> frozenset[int]:
        return frozenset({tokens.summary_end})

    def on_token(self, tracker: TrackerView, pos: int, token_id: int) -> Sequence[EvictionEvent]:
        closed = tracker.memento_closed
        if closed is None or not over_keep(tracker, self.keep_last_n):
            return ()
        return (tracker.evict_oldest(pos, EventKind.RESTART, with_delimiters=True, rewind_to=closed.summary_start),)
