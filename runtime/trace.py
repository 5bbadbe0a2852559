"""The one Trace model every part of memento-lens shares: token ids with roles and block indices."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .config import BlockMaskingConfig, MementoTokenIds
from .errors import InputFileError
from .schedule import Schedule, compute_schedule


class Role(str, enum.Enum):
    PROMPT = "prompt"
    BLOCK = "block"  # block content
    DELIMITER = "delimiter"  # the four memento tokens and structural glue between segments
    MEMENTO = "memento"  # memento (summary) content
    ANSWER = "answer"  # after the last memento / </think>


NO_BLOCK = -1


@dataclass(frozen=True)
class TokenRoles:
    """Per-token role and block index.

    Attributes:
        role: ``[n_tokens]`` of :class:`Role` values (as str).
        block: ``[n_tokens]`` int, the 0-based block a block/memento/delimiter token belongs to, else -1.
    """

    role: np.ndarray
    block: np.ndarray


def assign_roles(schedule: Schedule, token_ids: Sequence[int], tokens: MementoTokenIds) -> TokenRoles:
    """Roles from the block spans the tracker found (so they agree with the schedule).

    Args:
        schedule: from :func:`compute_schedule` on the same ``token_ids``.
        token_ids: ``[n_tokens]``.
    """
    n = len(token_ids)
    role = np.full(n, Role.DELIMITER.value, dtype=object)
    block = np.full(n, NO_BLOCK, dtype=np.int64)

    def mark(index: int, open_pos: int, close_pos: int | None, inner: Role) -> int:
        """Role and block index of one delimited span (a block or its memento); returns its last position."""
        last = close_pos if close_pos is not None else n - 1
        if open_pos >= schedule.prompt_len:  # spans inside the prompt stay prompt
            # an unclosed span (a generation cut inside it) runs to the end: its last token is content
            role[open_pos + 1 : close_pos if close_pos is not None else n] = inner.value
            role[open_pos] = Role.DELIMITER.value
            if close_pos is not None:
                role[close_pos] = Role.DELIMITER.value
        block[open_pos : last + 1] = index
        return last

    last_struct = schedule.prompt_len - 1
    for span in schedule.blocks:
        last_struct = max(last_struct, mark(span.block, span.start, span.end, Role.BLOCK))
        if span.summary_start is not None:
            last_struct = max(last_struct, mark(span.block, span.summary_start, span.summary_end, Role.MEMENTO))
    ids = np.asarray(token_ids, dtype=np.int64)
    answer_from = last_struct + 1
    if tokens.think_end is not None:  # glue up to </think> is structure, the answer follows it
        hits = np.nonzero(ids[answer_from:] == tokens.think_end)[0]
        if len(hits):
            answer_from += int(hits[0]) + 1
    role[max(answer_from, schedule.prompt_len) :] = Role.ANSWER.value
    role[: schedule.prompt_len] = Role.PROMPT.value
    return TokenRoles(role=role, block=block)


@dataclass
class Trace:
    """One token stream.

    Attributes:
        trace_id: unique within a run or file.
        token_ids: ``[n_tokens]`` prompt + generated.
        prompt_len: leading prompt tokens.
        meta: free JSON-able metadata (source file, domain, problem, ...).
    """

    trace_id: str
    token_ids: list[int]
    prompt_len: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.prompt_len, bool) or not isinstance(self.prompt_len, (int, np.integer)):
            raise InputFileError(f"trace {self.trace_id!r}: prompt_len must be an integer, got {self.prompt_len!r}")
        if not 0 <= self.prompt_len <= len(self.token_ids):
            raise InputFileError(
                f"trace {self.trace_id!r}: prompt_len {self.prompt_len} outside [0, {len(self.token_ids)}]"
            )

    def __len__(self) -> int:
        return len(self.token_ids)

    def schedule(self, config: BlockMaskingConfig, tokens: MementoTokenIds) -> Schedule:
        return compute_schedule(self.token_ids, config, tokens, prompt_len=self.prompt_len)

    def roles(self, tokens: MementoTokenIds, config: BlockMaskingConfig | None = None) -> TokenRoles:
        cfg = config or BlockMaskingConfig(mask_delimiters=False)
        return assign_roles(self.schedule(cfg, tokens), self.token_ids, tokens)
