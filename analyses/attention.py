"""What a query sees: the positions still cached at a generation step, and where one attention row's mass
goes by role (prompt, mementos, current block, other blocks, delimiters, answer, evicted, future). Pure
functions on hand-built arrays (no streamlit, no I/O): the app's trace and attention pages draw these.

Conventions: positions are 0-based logical positions; an eviction event at ``position`` p removes
``[start, end)`` for every generation step ``>= p`` (the token at p is already computed without it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

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


def evicted_at_step(
    n_tokens: int, starts: Sequence[int], ends: Sequence[int], positions: Sequence[int], step: int
) -> np.ndarray:
    """Which positions are evicted from the cache once token ``step`` has been processed.

    Args:
        n_tokens: length of the trace.
        starts, ends, positions: per event, the evicted ``[start, end)`` and the position that fired it
            (the ``events.parquet`` columns).
        step: generation step (= position of the token being processed).

    Returns:
        ``[n_tokens]`` bool, True where a range fired at ``position <= step`` covers the position.
    """
    gone = np.zeros(n_tokens, dtype=bool)
    for s, e, p in zip(starts, ends, positions):
        if p <= step and e > s:
            gone[max(0, int(s)) : min(n_tokens, int(e))] = True
    return gone


def visible_at_step(
    n_tokens: int, starts: Sequence[int], ends: Sequence[int], positions: Sequence[int], step: int
) -> np.ndarray:
    """``[n_tokens]`` bool: positions ``<= step`` that are still in the cache at ``step``."""
    vis = np.arange(n_tokens) <= step
    return vis & ~evicted_at_step(n_tokens, starts, ends, positions, step)


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
