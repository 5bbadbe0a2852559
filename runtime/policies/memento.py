"""The paper's policy: compact a block when its memento ends, keeping the last N completed blocks (FIFO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import MementoTokenIds
from ..events import EventKind, EvictionEvent
from .base import EvictionPolicy, TrackerView, over_keep


@dataclass(frozen=True)
class Memento(EvictionPolicy):
    """On ``<|summary_end|>``: evict the oldest completed block while more than ``keep_last_n`` are queued.

    One block per ``<|summary_end|>`` (as the reference engine): blocks queued in the prompt leave one at a
    time. ``keep_last_n = 0`` is the paper's setting (each block goes as soon as its memento ends).

    Attributes:
        keep_last_n: completed blocks kept visible (>= 0).
        mask_delimiters: evict ``<|block_start|>``/``<|block_end|>`` with the content (Phi-4 style) or keep
            them (Qwen3/OLMo3 style).
    """

    name = "memento"
    keep_last_n: int = 0
    mask_delimiters: bool = False

    def reacts_to(self, tokens: MementoTokenIds) -> frozenset[int]:
        return frozenset({tokens.summary_end})

    def on_token(self, tracker: TrackerView, pos: int, token_id: int) -> Sequence[EvictionEvent]:
        if tracker.memento_closed is None or not over_keep(tracker, self.keep_last_n):
            return ()
        return (tracker.evict_oldest(pos, EventKind.COMPACT, with_delimiters=self.mask_delimiters),)
