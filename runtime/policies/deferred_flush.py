"""Keep the last block for the answer: evict a completed block only when the next block starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import MementoTokenIds
from ..events import EventKind, EvictionEvent
from .base import EvictionPolicy, TrackerView


@dataclass(frozen=True)
class DeferredFlush(EvictionPolicy):
    """``keep_last_block_for_answer`` with keep 0: a completed block is evicted on the next ``<|block_start|>``
    (so a final answer after the last memento still sees its block); ``<|summary_end|>`` evicts nothing.

    Attributes:
        mask_delimiters: evict the delimiters with the content.
        restart: restart world: delimiters always evicted, and the flushed block's memento KV recomputed from
            its ``<|summary_start|>``.
    """

    name = "deferred_flush"
    mask_delimiters: bool = False
    restart: bool = False

    def reacts_to(self, tokens: MementoTokenIds) -> frozenset[int]:
        return frozenset({tokens.block_start})

    def on_token(self, tracker: TrackerView, pos: int, token_id: int) -> Sequence[EvictionEvent]:
        pending = tracker.pending_blocks
        if not pending:
            return ()
        rewind = pending[0].summary_start if self.restart else None
        with_delims = self.mask_delimiters or self.restart
        return (tracker.evict_oldest(pos, EventKind.DEFERRED_FLUSH, with_delimiters=with_delims, rewind_to=rewind),)
