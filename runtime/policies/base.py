"""The eviction-policy contract: what the tracker calls, and what a policy may ask of the tracker.

:class:`~memento_lens.runtime.schedule.BlockTracker` keeps the block bookkeeping (open blocks, mementos,
the FIFO queue of completed blocks, forced block ends, the ChatML assistant gate) and calls one hook of its
policy; the policy decides what is evicted. A policy is a small frozen dataclass:

* ``reacts_to(tokens) -> frozenset[int]``: the token ids whose processing may make it evict. The tracker
  calls :meth:`EvictionPolicy.on_token` for those ids only, and the fast schedule
  (``runtime.schedule.fast_schedule``) feeds the tracker only these plus the tracker's own bookkeeping tokens,
  so the two paths agree by construction.
* ``on_token(tracker, pos, token_id) -> Sequence[EvictionEvent]``: called for a *generated* token (never a
  prompt token, never before the assistant section when one is required) after the tracker has updated its
  block state for it; returns the events this token fires (evictions go through
  :meth:`TrackerView.evict_oldest`, which pops the queue and builds the event).

Policies hold configuration only; per-sequence state is the tracker's (one policy object may serve many
sequences at once, as in batched generation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

from ..config import MementoTokenIds
from ..events import BlockSpan, EventKind, EvictionEvent


class TrackerView(Protocol):
    """What a policy may read and do on the tracker (``runtime.schedule.BlockTracker`` implements it)."""

    @property
    def pending_blocks(self) -> tuple[BlockSpan, ...]:
        """Completed blocks (memento ended) not yet evicted, oldest first (the FIFO queue)."""
        ...

    @property
    def memento_closed(self) -> BlockSpan | None:
        """The block whose memento the current token's ``<|summary_end|>`` completed, else None."""
        ...

    @property
    def blocks(self) -> list[BlockSpan]:
        """Every block seen so far, 0-based (prompt blocks included)."""
        ...

    def evict_oldest(
        self, pos: int, kind: EventKind, *, with_delimiters: bool, rewind_to: int | None = None
    ) -> EvictionEvent:
        """Pop the oldest pending block and return its eviction event fired at ``pos``."""
        ...


@dataclass(frozen=True)
class EvictionPolicy:
    """Base of every eviction policy: reacts to nothing, evicts nothing (subclass and override both methods)."""

    name: ClassVar[str] = "policy"

    def reacts_to(self, tokens: MementoTokenIds) -> frozenset[int]:
        """Token ids whose processing may fire events (the only ids :meth:`on_token` is called for)."""
        return frozenset()

    def on_token(self, tracker: TrackerView, pos: int, token_id: int) -> Sequence[EvictionEvent]:
        """Events fired by the generated token ``token_id`` at ``pos`` (block state already updated)."""
        return ()


def over_keep(tracker: TrackerView, keep_last_n: int) -> bool:
    """The keep-last-N rule: more than ``keep_last_n`` completed blocks are queued, so the oldest goes."""
    return len(tracker.pending_blocks) > keep_last_n
