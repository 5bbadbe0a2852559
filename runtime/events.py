"""The schedule's data types: eviction events and block spans (shared by the tracker and the eviction policies).

Kept apart from ``schedule.py`` so that ``runtime/policies/`` (which the tracker delegates to) can build
events without importing the tracker. ``schedule.py`` re-exports every name here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(str, enum.Enum):
    COMPACT = "compact"  # block content evicted on <|summary_end|>
    RESTART = "restart"  # block + delimiters evicted, memento KV recomputed
    DEFERRED_FLUSH = "deferred_flush"  # keep_last_block_for_answer: evicted on next <|block_start|>
    FORCED_BLOCK_END = "forced_block_end"  # max_block_tokens reached: <|block_end|> forced here
    WARNING = "warning"  # malformed stream; nothing evicted


@dataclass(frozen=True)
class EvictionEvent:
    """One schedule event.

    Attributes:
        kind: what happened.
        position: index (in prompt + generated) of the token whose processing fired the event.
        start, end: logical ``[start, end)`` range evicted (empty for forced block ends and warnings).
        block: 0-based block index the event concerns (None for some warnings).
        rewind_to: restart only: first position whose KV is recomputed (the memento's summary_start).
        message: warnings only: what is malformed.
    """

    kind: EventKind
    position: int
    start: int
    end: int
    block: int | None
    rewind_to: int | None = None
    message: str | None = None

    @property
    def n_evicted(self) -> int:
        return self.end - self.start

    @property
    def effective_from(self) -> int:
        """First position whose (final) KV is computed without the evicted range."""
        return self.rewind_to if self.rewind_to is not None else self.position

    def to_json(self) -> dict:
        """The cross-engine form: kind, position, start, end, block (+ message for warnings)."""
        out = {
            "kind": self.kind.value,
            "position": self.position,
            "start": self.start,
            "end": self.end,
            "block": self.block,
        }
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass
class BlockSpan:
    """Positions of one block and its memento (None until seen)."""

    block: int
    start: int  # <|block_start|>
    end: int | None = None  # <|block_end|>
    summary_start: int | None = None
    summary_end: int | None = None

    @property
    def complete(self) -> bool:
        return self.end is not None and self.summary_end is not None

    def span(self, with_delimiters: bool) -> tuple[int, int]:
        """``[start, end)`` of a closed block: content only, or with ``<|block_start|>``/``<|block_end|>``."""
        assert self.end is not None
        return (self.start, self.end + 1) if with_delimiters else (self.start + 1, self.end)
