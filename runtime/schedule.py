"""The eviction schedule: a pure function from (token ids, config) to eviction events.

One stateful :class:`BlockTracker` holds the block state machine. Generation feeds it token by token;
:func:`compute_schedule` folds it over a whole stream. Semantics follow the reference engine
(Memento's vLLM overlay):

* a block opens on ``<|block_start|>`` (a stack: nested blocks are tracked, with a warning),
  closes on ``<|block_end|>``; ``<|summary_start|>`` attaches to the most recently closed block that
  has no memento yet; ``<|summary_end|>`` completes it and queues it for eviction (FIFO);
* on ``<|summary_end|>`` (``compact_on_summary_end``) the oldest queued block is evicted while more
  than ``keep_last_n_blocks`` are queued;
* evicted range: ``[block_start+1, block_end)`` (delimiters stay) or ``[block_start, block_end+1)``
  (``mask_delimiters``); restart mode always evicts ``[block_start, block_end+1)`` and rewinds to the
  memento's ``<|summary_start|>`` so the memento KV is recomputed without the block;
* ``keep_last_block_for_answer`` (keep 0 only) defers the eviction to the next ``<|block_start|>``;
* prompt tokens set up block state but never fire events.

An event at ``position`` p takes effect for the token at p itself: that token's KV and logits are
computed with the range already gone (the engine evicts before it feeds the sampled token back).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .config import BlockMaskingConfig, MementoTokenIds


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

    def eviction_range(self, config: BlockMaskingConfig) -> tuple[int, int]:
        assert self.end is not None
        if config.restart_mode or config.mask_delimiters:
            return self.start, self.end + 1
        return self.start + 1, self.end


@dataclass
class BlockTracker:
    """Incremental block state for one sequence. Feed every token, in order, through :meth:`step`."""

    config: BlockMaskingConfig
    tokens: MementoTokenIds
    prompt_len: int = 0
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

    def __post_init__(self) -> None:
        self.config = self.tokens.resolve_config(self.config)

    # -- queries used by generation ---------------------------------------------------------
    @property
    def must_end_block(self) -> bool:
        """True when ``max_block_tokens`` forces the next token to be ``<|block_end|>``."""
        cap = self.config.max_block_tokens
        return cap > 0 and self.cap_in_block and self.cap_count >= cap

    @property
    def in_block(self) -> bool:
        return bool(self.open_blocks)

    # -- the state machine ---------------------------------------------------------------------
    def step(self, token_id: int) -> list[EvictionEvent]:
        """Process the next token; return the events its processing fires (empty for prompt tokens)."""
        pos = self.n_seen
        self.n_seen += 1
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

        if token_id == ids.block_start:
            if fires and cfg.keep_last_block_for_answer and cfg.keep_last_n_blocks == 0 and self.pending:
                ev = self._evict_oldest(pos, EventKind.DEFERRED_FLUSH, rewind_block=None)
                if ev is not None:
                    events.append(ev)
            if self.open_blocks and fires:
                events.append(
                    self._warn(
                        pos,
                        f"<|block_start|> inside open block {self.open_blocks[-1]} (nested block)",
                        block=self.open_blocks[-1],
                    )
                )
            self.blocks.append(BlockSpan(block=len(self.blocks), start=pos))
            self.open_blocks.append(len(self.blocks) - 1)
        elif token_id == ids.block_end:
            if not self.open_blocks:
                if fires:
                    events.append(self._warn(pos, "<|block_end|> with no open block"))
            else:
                self.blocks[self.open_blocks.pop()].end = pos
        elif token_id == ids.summary_start:
            target = next((b for b in reversed(self.blocks) if b.end is not None and b.summary_start is None), None)
            if target is None:
                if fires:
                    events.append(self._warn(pos, "<|summary_start|> with no closed block awaiting a memento"))
            else:
                target.summary_start = pos
                self.current_summary = target.block
        elif token_id == ids.summary_end:
            if self.current_summary is None:
                if fires:
                    events.append(self._warn(pos, "<|summary_end|> with no open memento"))
            else:
                block = self.blocks[self.current_summary]
                block.summary_end = pos
                self.current_summary = None
                self.pending.append(block.block)
                # Prompt tokens only queue blocks; evictions fire from generated tokens.
                if (
                    fires
                    and cfg.compact_on_summary_end
                    and not (cfg.keep_last_block_for_answer and cfg.keep_last_n_blocks == 0)
                ):
                    kind = EventKind.RESTART if cfg.restart_mode else EventKind.COMPACT
                    ev = self._evict_oldest(pos, kind, rewind_block=block.block)
                    if ev is not None:
                        events.append(ev)
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

    # -- helpers -----------------------------------------------------------------------------
    def _evict_oldest(self, pos: int, kind: EventKind, rewind_block: int | None) -> EvictionEvent | None:
        cfg = self.config
        if cfg.keep_last_n_blocks < 0 or len(self.pending) <= cfg.keep_last_n_blocks:
            return None
        block = self.blocks[self.pending.pop(0)]
        self.evicted.append(block.block)
        start, end = block.eviction_range(cfg)
        rewind = None
        if cfg.restart_mode:
            # The reference rewinds to the memento that just ended (the flushed one for deferred flushes).
            rewind_src = self.blocks[rewind_block] if rewind_block is not None else block
            rewind = rewind_src.summary_start
        return EvictionEvent(kind, pos, start, end, block.block, rewind_to=rewind)

    def _count_for_cap(self, token_id: int) -> None:
        ids = self.tokens
        if token_id == ids.block_start:
            self.cap_in_block, self.cap_count = True, 0
        elif token_id == ids.block_end:
            self.cap_in_block, self.cap_count = False, 0
        elif self.cap_in_block and token_id not in ids.delimiters:
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
    token_ids: Sequence[int] | Iterable[int], config: BlockMaskingConfig, tokens: MementoTokenIds, prompt_len: int = 0
) -> Schedule:
    """The eviction schedule of a whole token stream (prompt + generated).

    Args:
        token_ids: ``[n_tokens]`` ids, prompt first.
        config: the masking config.
        tokens: the memento token ids of the vocabulary.
        prompt_len: number of leading prompt tokens (they set up state but never fire events).
    """
    tracker = BlockTracker(config, tokens, prompt_len=prompt_len)
    events: list[EvictionEvent] = []
    for tok in token_ids:
        events.extend(tracker.step(int(tok)))
    events.extend(tracker.finish())
    return Schedule(tuple(events), tuple(tracker.blocks), tracker.n_seen, prompt_len, tracker.config)
