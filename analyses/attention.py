"""What a query sees: the positions still cached at a generation step, and where one attention row's mass
goes by role (prompt, mementos, current block, other blocks, delimiters, answer, evicted, future). Pure
functions on hand-built arrays (no streamlit, no I/O): the app's trace and attention pages draw these.

Conventions: positions are 0-based logical positions; visibility is the runtime's one rule
(:mod:`memento_lens.runtime.masks`: an event hides ``[start, end)`` from its ``effective_from`` on, the
firing position or, for restart events, the memento's ``<|summary_start|>``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from memento_lens.runtime.masks import events_from_table, evicted_at, visible_at
from memento_lens.runtime.schedule import EventKind, EvictionEvent

# Attention-mass categories (display order).
MASS_CATEGORIES: tuple[str, ...] = (
    "prompt",
    "mementos",
    "current block",
    "other visible blocks",
    "delimiters",
    "answer",
    "evicted",
    "future",
)


def _events(
    starts: Sequence[int], ends: Sequence[int], positions: Sequence[int], rewind_to: Sequence[Any] | None
) -> tuple[EvictionEvent, ...]:
    """Column lists -> events, through the one table reader (kind is irrelevant to visibility)."""
    n = len(positions)
    cols = {"kind": [EventKind.COMPACT.value] * n, "position": positions, "start": starts, "end": ends}
    cols["block"] = [-1] * n
    if rewind_to is not None:
        cols["rewind_to"] = rewind_to
    return events_from_table(cols)


def evicted_at_step(
    n_tokens: int,
    starts: Sequence[int],
    ends: Sequence[int],
    positions: Sequence[int],
    step: int,
    rewind_to: Sequence[Any] | None = None,
) -> np.ndarray:
    """Which positions are hidden from the query at ``step``: :func:`runtime.masks.evicted_at` on column lists.

    Prefer ``masks.evicted_at(masks.events_from_table(events_df), step, n_tokens)``; this keeps the
    column-list form working.

    Args:
        n_tokens: length of the trace.
        starts, ends, positions: per event, the evicted ``[start, end)`` and the position that fired it
            (the ``events.parquet`` columns).
        step: generation step (= position of the token being processed).
        rewind_to: per event, the ``rewind_to`` column (restart events hide their range from the
            memento's ``<|summary_start|>`` on); None = no restart events.

    Returns:
        ``[n_tokens]`` bool.
    """
    return evicted_at(_events(starts, ends, positions, rewind_to), step, n_tokens)


def visible_at_step(
    n_tokens: int,
    starts: Sequence[int],
    ends: Sequence[int],
    positions: Sequence[int],
    step: int,
    rewind_to: Sequence[Any] | None = None,
) -> np.ndarray:
    """``[n_tokens]`` bool: positions ``<= step`` still visible at ``step`` (:func:`runtime.masks.visible_at`)."""
    return visible_at(_events(starts, ends, positions, rewind_to), step, n_tokens)


def mass_categories(roles: Sequence[str], blocks: Sequence[int], query_pos: int, visible: np.ndarray) -> np.ndarray:
    """Attention-mass category of each key position for one query.

    ``current block`` is the block content of the block the query sits in (the query's block index
    when it is a block/delimiter/memento token), ``other visible blocks`` block content of any other
    block still in the cache; positions not visible are ``evicted`` (at or before the query) or ``future``
    (after it).

    Returns:
        ``[n_keys]`` object array of :data:`MASS_CATEGORIES` values.
    """
    roles = np.asarray(roles, dtype=object)
    blocks = np.asarray(blocks, dtype=np.int64)
    cur = int(blocks[query_pos]) if 0 <= query_pos < len(blocks) else -1
    cat = np.empty(len(roles), dtype=object)
    cat[roles == "prompt"] = "prompt"
    cat[roles == "memento"] = "mementos"
    cat[roles == "delimiter"] = "delimiters"
    cat[roles == "answer"] = "answer"
    is_block = roles == "block"
    cat[is_block & (blocks == cur) & (cur >= 0)] = "current block"
    cat[is_block & ~((blocks == cur) & (cur >= 0))] = "other visible blocks"
    hidden = ~np.asarray(visible, dtype=bool)
    after = np.arange(len(roles)) > query_pos
    cat[hidden & ~after] = "evicted"
    cat[hidden & after] = "future"
    cat[cat == None] = "delimiters"  # noqa: E711  (unknown roles count as structure)
    return cat


def attention_mass_by_role(
    weights: np.ndarray | torch.Tensor, roles: Sequence[str], blocks: Sequence[int], query_pos: int, visible: np.ndarray
) -> dict[str, float]:
    """Sum of one attention row per category (see :func:`mass_categories`).

    Args:
        weights: ``[n_keys]`` attention of the query over positions (or ``[heads, n_keys]``, averaged
            over heads first). Keys beyond ``len(roles)`` are ignored; missing keys count as 0.
        roles, blocks: per position, from ``tokens.parquet``.
        query_pos: the query's position.
        visible: ``[n_tokens]`` bool from :func:`visible_at_step`.

    Returns:
        ``{category: mass}`` for every :data:`MASS_CATEGORIES` entry (``evicted`` and ``future`` should
        be ~0 for a correctly masked capture; a non-zero value flags a leak).
    """
    w = torch.as_tensor(weights).detach().to(torch.float64).cpu().numpy()
    if w.ndim == 2:
        w = w.mean(axis=0)
    n = len(roles)
    row = np.zeros(n)
    row[: min(n, w.shape[-1])] = w[:n]
    cat = mass_categories(roles, blocks, query_pos, visible)
    return {c: float(row[cat == c].sum()) for c in MASS_CATEGORIES}


__all__ = ["MASS_CATEGORIES", "evicted_at_step", "visible_at_step", "mass_categories", "attention_mass_by_role"]
