"""The eviction schedule: a pure function from (token ids, config) to eviction events.

One stateful :class:`BlockTracker` holds the block state machine. Generation feeds it token by token;
:func:`compute_schedule` folds it over a whole stream. Semantics follow the reference engine
(Memento's vLLM overlay):

* a block opens on ``<|block_start|>`` (a stack: nested blocks are tracked, with a warning),
  closes on ``<|block_end|>``; ``<|summary_start|>`` attaches to the most recently closed block that
  has no memento yet; ``<|summary_end|>`` completes it and queues it for eviction (FIFO);
* what is evicted, and when, is the tracker's *eviction policy* (``runtime/policies/``, one small dataclass
  per file; :func:`~memento_lens.runtime.policies.policy_for` reads the config's flags): ``Memento``
  evicts the oldest queued block on ``<|summary_end|>`` while more than ``keep_last_n_blocks`` are queued,
  range ``[block_start+1, block_end)`` (delimiters stay) or ``[block_start, block_end+1)``
  (``mask_delimiters``); ``Restart`` always evicts ``[block_start, block_end+1)`` and rewinds to the
  memento's ``<|summary_start|>`` so the memento KV is recomputed without the block; ``DeferredFlush``
  (``keep_last_block_for_answer``, keep 0) defers the eviction to the next ``<|block_start|>``;
  ``Vanilla`` never evicts;
* prompt tokens set up block state but never fire events.

An event at ``position`` p takes effect for the token at p itself: that token's KV and logits are
computed with the range already gone (the engine evicts before it feeds the sampled token back).
Visibility from events: ``runtime/masks.py`` (the one rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .config import BlockMaskingConfig, MementoTokenIds
from .events import BlockSpan, EventKind, EvictionEvent
from .policies import EvictionPolicy, policy_for


@dataclass
class BlockTracker:
    """Incremental block state for one sequence. Feed every token, in order, through :meth:`step`.

    The tracker keeps the block bookkeeping; eviction decisions are its ``policy``'s (default: the one
    ``config`` describes, :func:`~memento_lens.runtime.policies.policy_for`). It implements the
    :class:`~memento_lens.runtime.policies.TrackerView` a policy sees.
    """

    config: BlockMaskingConfig
    tokens: MementoTokenIds
    prompt_len: int = 0
    policy: EvictionPolicy | None = None
    blocks: list[BlockSpan] = field(default_factory=list)
    open_blocks: list[int] = field(default_factory=list)  # stack of block indices
    pending: list[int] = field(default_factory=list)  # completed, not yet evicted (FIFO)
    evicted: list[int] = field(default_factory=list)
    current_summary: int | None = None
    last_im_start: int | None = None
    assistant_start: int | None = None
    cap_in_block: bool = False
    cap_count: int = 0
    n_seen: int = 0
    _closed: BlockSpan | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.config = self.tokens.resolve_config(self.config)
        if self.policy is None:
            self.policy = policy_for(self.config)
        self._delimiters = self.tokens.delimiters
        self._reacts = frozenset(self.policy.reacts_to(self.tokens))
        self._relevant = self._relevant_tokens()

    # -- queries used by generation ---------------------------------------------------------
    @property
    def must_end_block(self) -> bool:
        """True when ``max_block_tokens`` forces the next token to be ``<|block_end|>``."""
        cap = self.config.max_block_tokens
        return cap > 0 and self.cap_in_block and self.cap_count >= cap

    @property
    def in_block(self) -> bool:
        return bool(self.open_blocks)

    @property
    def relevant_tokens(self) -> frozenset[int] | None:
        """The token ids that can change this tracker's state or fire events (None: every token can).

        The four delimiters, the ChatML markers while the assistant section is required, and what the policy
        :meth:`~memento_lens.runtime.policies.EvictionPolicy.reacts_to`; None under ``max_block_tokens``,
        which counts every token. Any other token only advances the position (:meth:`skip_to`).
        """
        return self._relevant

    def _relevant_tokens(self) -> frozenset[int] | None:
        if self.config.max_block_tokens > 0:
            return None
        ids = set(self._delimiters) | self._reacts
        if self.config.require_assistant_section:
            ids |= {t for t in (self.tokens.im_start, self.tokens.assistant) if t is not None}
        return frozenset(ids)

    # -- what a policy sees (TrackerView) ------------------------------------------------------
    @property
    def pending_blocks(self) -> tuple[BlockSpan, ...]:
        """Completed blocks not yet evicted, oldest first."""
        return tuple(self.blocks[b] for b in self.pending)

    @property
    def memento_closed(self) -> BlockSpan | None:
        """The block whose memento the token being processed completed (its ``<|summary_end|>``), else None."""
        return self._closed

    def evict_oldest(
        self, pos: int, kind: EventKind, *, with_delimiters: bool, rewind_to: int | None = None
    ) -> EvictionEvent:
        """Pop the oldest pending block; its eviction event fired at ``pos`` (range: :meth:`BlockSpan.span`)."""
        if not self.pending:
            raise ValueError(f"policy {self.policy!r} evicts at position {pos} but no completed block is queued")
        block = self.blocks[self.pending.pop(0)]
        self.evicted.append(block.block)
        start, end = block.span(with_delimiters)
        return EvictionEvent(kind, pos, start, end, block.block, rewind_to=rewind_to)

    # -- the state machine ---------------------------------------------------------------------
    def skip_to(self, pos: int) -> None:
        """Advance to position ``pos`` over tokens not in :attr:`relevant_tokens` (they change nothing)."""
        if self._relevant is None:
            raise ValueError("max_block_tokens counts every token: feed each one through step()")
        if pos < self.n_seen:
            raise ValueError(f"skip_to({pos}): already at position {self.n_seen}")
        self.n_seen = pos

    def step(self, token_id: int) -> list[EvictionEvent]:
        """Process the next token; return the events its processing fires (empty for prompt tokens).

        Order within one token: the forced block end (or its warning), the policy's events, then warnings
        about malformed structure.
        """
        pos = self.n_seen
        self.n_seen += 1
        self._closed = None
        fires = pos >= self.prompt_len
        cfg, ids = self.config, self.tokens
        events: list[EvictionEvent] = []

        forced = self.must_end_block
        if forced and fires:
            if token_id == ids.block_end:
                events.append(
                    EvictionEvent(
                        EventKind.FORCED_BLOCK_END, pos, pos, pos, self.open_blocks[-1] if self.open_blocks else None
                    )
                )
            else:
                events.append(
                    self._warn(
                        pos,
                        f"block exceeds max_block_tokens={cfg.max_block_tokens} "
                        f"but token {token_id} is not <|block_end|>",
                    )
                )
        self._count_for_cap(token_id)

        if ids.im_start is not None and token_id == ids.im_start:
            self.last_im_start = pos
        if (
            cfg.require_assistant_section
            and ids.assistant is not None
            and token_id == ids.assistant
            and self.assistant_start is None
            and self.last_im_start is not None
            and pos - self.last_im_start <= 2
        ):
            self.assistant_start = pos
        if cfg.require_assistant_section and (self.assistant_start is None or pos <= self.assistant_start):
            return events

        malformed = self._track_blocks(pos, token_id) if token_id in self._delimiters else ()
        if fires:
            if token_id in self._reacts:
                events.extend(self.policy.on_token(self, pos, token_id))
            events.extend(malformed)
        return events

    def finish(self) -> list[EvictionEvent]:
        """End-of-stream checks: a warning per block never closed (only if anything was generated)."""
        if self.n_seen <= self.prompt_len:
            return []
        last = self.n_seen - 1
        return [
            self._warn(last, f"block {b} opened at {self.blocks[b].start} was never closed", block=b)
            for b in self.open_blocks
        ]

    def schedule(self, events: Sequence[EvictionEvent]) -> "Schedule":
        """The :class:`Schedule` of the stream fed so far, with the events it fired."""
        return Schedule(tuple(events), tuple(self.blocks), self.n_seen, self.prompt_len, self.config)

    # -- helpers -----------------------------------------------------------------------------
    def _track_blocks(self, pos: int, token_id: int) -> list[EvictionEvent]:
        """Block bookkeeping for one token; returns the warnings about malformed structure it finds."""
        ids = self.tokens
        warnings: list[EvictionEvent] = []
        if token_id == ids.block_start:
            if self.open_blocks:
                msg = f"<|block_start|> inside open block {self.open_blocks[-1]} (nested block)"
                warnings.append(self._warn(pos, msg, block=self.open_blocks[-1]))
            self.blocks.append(BlockSpan(block=len(self.blocks), start=pos))
            self.open_blocks.append(len(self.blocks) - 1)
        elif token_id == ids.block_end:
            if not self.open_blocks:
                warnings.append(self._warn(pos, "<|block_end|> with no open block"))
            else:
                self.blocks[self.open_blocks.pop()].end = pos
        elif token_id == ids.summary_start:
            target = next((b for b in reversed(self.blocks) if b.end is not None and b.summary_start is None), None)
            if target is None:
                warnings.append(self._warn(pos, "<|summary_start|> with no closed block awaiting a memento"))
            else:
                target.summary_start = pos
                self.current_summary = target.block
        elif token_id == ids.summary_end:
            if self.current_summary is None:
                warnings.append(self._warn(pos, "<|summary_end|> with no open memento"))
            else:
                block = self.blocks[self.current_summary]
                block.summary_end = pos
                self.current_summary = None
                self.pending.append(block.block)  # prompt blocks queue too; only generated tokens evict
                self._closed = block
        return warnings

    def _count_for_cap(self, token_id: int) -> None:
        ids = self.tokens
        if token_id == ids.block_start:
            self.cap_in_block, self.cap_count = True, 0
        elif token_id == ids.block_end:
            self.cap_in_block, self.cap_count = False, 0
        elif self.cap_in_block and token_id not in self._delimiters:
            self.cap_count += 1

    @staticmethod
    def _warn(pos: int, message: str, block: int | None = None) -> EvictionEvent:
        return EvictionEvent(EventKind.WARNING, pos, pos, pos, block, message=message)


@dataclass(frozen=True)
class Schedule:
    """All events of one token stream, plus the block spans found.

    Attributes:
        events: in firing order.
        blocks: every block seen (prompt blocks included), 0-based.
        n_tokens: length of prompt + generated.
        prompt_len: tokens before the first one that can fire events.
        config: the config actually applied (after resolving ``require_assistant_section``).
    """

    events: tuple[EvictionEvent, ...]
    blocks: tuple[BlockSpan, ...]
    n_tokens: int
    prompt_len: int
    config: BlockMaskingConfig

    @property
    def evictions(self) -> tuple[EvictionEvent, ...]:
        """Events that remove a non-empty range."""
        return tuple(e for e in self.events if e.end > e.start)

    @property
    def warnings(self) -> tuple[EvictionEvent, ...]:
        return tuple(e for e in self.events if e.kind == EventKind.WARNING)

    def events_at(self, position: int) -> tuple[EvictionEvent, ...]:
        return tuple(e for e in self.events if e.position == position)


def compute_schedule(
    token_ids: Sequence[int] | Iterable[int],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    prompt_len: int = 0,
    policy: EvictionPolicy | None = None,
) -> Schedule:
    """The eviction schedule of a whole token stream (prompt + generated).

    Args:
        token_ids: ``[n_tokens]`` ids, prompt first.
        config: the masking config.
        tokens: the memento token ids of the vocabulary.
        prompt_len: number of leading prompt tokens (they set up state but never fire events).
        policy: the eviction policy (default: the one ``config`` describes, ``policies.policy_for``).
    """
    tracker = BlockTracker(config, tokens, prompt_len=prompt_len, policy=policy)
    events: list[EvictionEvent] = []
    for tok in token_ids:
        events.extend(tracker.step(int(tok)))
    events.extend(tracker.finish())
    return tracker.schedule(events)


def _member(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(ids, wanted)`` through a lookup table (ids are small non-negative vocabulary indices)."""
    if len(ids) == 0:
        return np.zeros(0, dtype=bool)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi > 1 << 24:
        return np.isin(ids, wanted)
    lut = np.zeros(max(hi, int(wanted.max())) + 1, dtype=bool)
    lut[wanted] = True
    return lut[ids]


def fast_schedule(
    token_ids: Sequence[int] | np.ndarray,
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    prompt_len: int = 0,
    policy: EvictionPolicy | None = None,
) -> Schedule:
    """Exactly :func:`compute_schedule`, feeding the tracker only the tokens that can change
    its state: the tracker's :attr:`~memento_lens.runtime.schedule.BlockTracker.relevant_tokens` (its
    bookkeeping tokens and what the eviction policy reacts to), found with numpy; every other token only
    advances the position (``BlockTracker.skip_to``). Under ``max_block_tokens`` every token counts, and the
    full per-token loop is used.
    """
    tracker = BlockTracker(config, tokens, prompt_len=prompt_len, policy=policy)
    relevant = tracker.relevant_tokens
    if relevant is None:
        return compute_schedule(token_ids, config, tokens, prompt_len=prompt_len, policy=tracker.policy)
    ids = np.asarray(token_ids, dtype=np.int64)
    events = []
    positions = np.flatnonzero(_member(ids, np.asarray(sorted(relevant), dtype=np.int64)))
    for pos, tok in zip(positions.tolist(), ids[positions].tolist()):
        tracker.skip_to(pos)
        events.extend(tracker.step(tok))
    tracker.skip_to(len(ids))
    events.extend(tracker.finish())
    return tracker.schedule(events)


__all__ = [
    "fast_schedule",
    "BlockSpan",
    "BlockTracker",
    "EventKind",
    "EvictionEvent",
    "EvictionPolicy",
    "Schedule",
    "compute_schedule",
    "policy_for",
]
