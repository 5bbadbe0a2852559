"""What a query sees: the positions still cached at a generation step, and where one attention row's mass
goes by role (prompt, mementos, current block, other blocks, delimiters, answer, evicted, future). Pure
functions on hand-built arrays (no streamlit, no I/O): the app's trace and attention pages draw these.

Conventions: positions are 0-based logical positions; visibility is the runtime's one rule
(:mod:`memento_lens.runtime.masks`: an event hides ``[start, end)`` from its ``effective_from`` on, the
firing position or, for restart events, the memento's ``<|summary_start|>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from memento_lens.runtime.masks import events_from_table, evicted_at, hides, visible_at
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


# ---------------------------------------------------------------------------------------------------------
# Query x key patterns over a window of a captured trace
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pattern:
    """Attention of a window of queries over a window of keys, per head, with what was not visible kept apart.

    Attributes:
        weights: ``[heads, n_rows, n_cols]`` float32. Row i covers query positions ``[q_edges[i],
            q_edges[i+1])``, column j key positions ``[k_edges[j], k_edges[j+1])``; a cell is the attention
            mass the row's captured queries put on the column's keys, averaged over those queries (for
            single positions: the weight itself). ``NaN`` where no key of the cell is visible to any of the
            row's queries (not visible, as opposed to a visible key given 0 attention), and for rows with no
            captured query.
        q_edges, k_edges: ``[n_rows + 1]`` / ``[n_cols + 1]`` int64 position edges.
        n_queries: ``[n_rows]`` captured queries per row.
    """

    weights: np.ndarray
    q_edges: np.ndarray
    k_edges: np.ndarray
    n_queries: np.ndarray

    @property
    def binned(self) -> bool:
        return bool((np.diff(self.q_edges) > 1).any() or (np.diff(self.k_edges) > 1).any())

    @property
    def rows(self) -> np.ndarray:
        """First query position of each row."""
        return self.q_edges[:-1]

    @property
    def cols(self) -> np.ndarray:
        """First key position of each column."""
        return self.k_edges[:-1]

    def head(self, head: int | None) -> np.ndarray:
        """``[n_rows, n_cols]`` of one head, or the mean over heads (``None``); NaN kept."""
        if head is None:
            with np.errstate(invalid="ignore"):
                return self.weights.mean(axis=0)
        return self.weights[int(head)]


def edges(lo: int, hi: int, max_bins: int | None = None) -> np.ndarray:
    """Position edges covering ``[lo, hi)``: one per position, or ``max_bins`` equal-width bins when wider."""
    n = max(0, int(hi) - int(lo))
    if max_bins is None or n <= max_bins:
        return np.arange(int(lo), int(lo) + n + 1, dtype=np.int64)
    return np.unique(np.linspace(int(lo), int(hi), int(max_bins) + 1).round().astype(np.int64))


def query_edges(captured: Sequence[int], lo: int, hi: int, max_rows: int) -> tuple[np.ndarray, bool]:
    """Row edges for the captured queries of ``[lo, hi)``: one row per captured query (row i covers
    ``[q_i, q_{i+1})``, holding query q_i alone) when at most ``max_rows`` are captured there, else
    ``max_rows`` equal-width bins. Returns ``(edges, rows_are_queries)``."""
    qs = sorted({int(q) for q in captured if lo <= q < hi})
    if len(qs) <= max_rows:
        return np.asarray([*qs, hi] if qs else [lo, hi], dtype=np.int64), bool(qs)
    return edges(lo, hi, max_rows), False


_CHUNK = 256  # queries processed together (bounded memory: chunk x heads x keys float32)


def _window_rows(
    rows: Mapping[int, np.ndarray], qs: Sequence[int], heads: int, lo: int, hi: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``[len(qs), heads, hi - lo]`` float32: the rows' weights on keys ``[lo, hi)`` (missing keys 0).

    A mapping may provide ``rows.window(qs, heads, lo, hi, out)`` returning exactly this (e.g. straight from
    compact storage, without expanding every row over the whole trace first); ``out`` is a buffer to reuse.
    """
    window = getattr(rows, "window", None)
    if window is not None:
        return window(qs, heads, lo, hi, out)
    out = np.zeros((len(qs), heads, hi - lo), dtype=np.float32)
    for i, q in enumerate(qs):
        w = np.asarray(rows[q], dtype=np.float32).reshape(heads, -1)
        m = min(hi, w.shape[-1]) - lo
        if m > 0:
            out[i, :, :m] = w[:, lo : lo + m]
    return out


def _window_visible(vis_of: Callable[[int], np.ndarray], qs: Sequence[int], lo: int, hi: int) -> np.ndarray:
    out = np.zeros((len(qs), hi - lo), dtype=bool)
    for i, q in enumerate(qs):
        v = np.asarray(vis_of(q), dtype=bool)
        m = min(hi, len(v)) - lo
        if m > 0:
            out[i, :m] = v[lo : lo + m]
    return out


def _n_heads(rows: Mapping[int, np.ndarray]) -> int:
    for q in rows:
        r = rows[q]
        return int(np.asarray(r).reshape(-1, np.shape(r)[-1]).shape[0])
    return 1


def query_key_pattern(
    rows: Mapping[int, np.ndarray],
    visible: Callable[[int], np.ndarray] | Mapping[int, np.ndarray],
    q_edges: np.ndarray,
    k_edges: np.ndarray,
) -> Pattern:
    """The query x key pattern of captured attention rows over a window (see :class:`Pattern`).

    Args:
        rows: ``{query position: [heads, n_tokens] weights over every position}`` (decoded captures; positions
            not visible hold 0). Queries outside ``q_edges`` are ignored. Rows are read a chunk at a time, so a
            lazy mapping over thousands of queries never holds them all.
        visible: ``visible(q) -> [n_tokens] bool`` (or a mapping), the query's visible positions by the
            runtime's one rule (:func:`memento_lens.runtime.masks.visible_at`); attention on positions it
            hides is left out of every cell (they are the not-visible part).
        q_edges, k_edges: position edges (:func:`edges`, :func:`query_edges`), every position or bins.

    Returns:
        :class:`Pattern`.
    """
    q_edges = np.asarray(q_edges, dtype=np.int64)
    k_edges = np.asarray(k_edges, dtype=np.int64)
    vis_of = visible.__getitem__ if isinstance(visible, Mapping) else visible
    n_rows, n_cols = max(len(q_edges) - 1, 0), max(len(k_edges) - 1, 0)
    heads = _n_heads(rows)
    total = np.zeros((n_rows, heads, n_cols), dtype=np.float64)
    seen = np.zeros((n_rows, n_cols), dtype=bool)
    count = np.zeros(n_rows, dtype=np.int64)
    if n_rows and n_cols:
        lo, hi = int(k_edges[0]), int(k_edges[-1])
        starts = k_edges[:-1] - lo
        qs = [int(q) for q in sorted(rows) if q_edges[0] <= q < q_edges[-1]]
        buf = None
        for c in range(0, len(qs), _CHUNK):
            cq = qs[c : c + _CHUNK]
            w = buf = _window_rows(rows, cq, heads, lo, hi, buf)
            v = _window_visible(vis_of, cq, lo, hi)
            w *= v[:, None, :]  # weight on a hidden position (a leak) is not drawn as visible mass
            cell = np.add.reduceat(w, starts, axis=2)  # [c, heads, cols]
            seen_c = np.add.reduceat(v.astype(np.int32), starts, axis=1) > 0
            ri = np.searchsorted(q_edges, cq, side="right") - 1  # sorted, so rows are runs
            uniq, first = np.unique(ri, return_index=True)
            total[uniq] += np.add.reduceat(cell, first, axis=0)
            seen[uniq] |= np.logical_or.reduceat(seen_c, first, axis=0)
            count[uniq] += np.diff(np.append(first, len(cq)))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (total / np.maximum(count, 1)[:, None, None]).astype(np.float32).transpose(1, 0, 2).copy()
    out[:, ~seen] = np.nan
    return Pattern(out, q_edges, k_edges, count)


def pattern_difference(a: Pattern, b: Pattern) -> Pattern:
    """``a - b`` cell by cell (e.g. normal - restart): NaN where either is not visible or not captured.

    Raises ValueError when the two patterns cover different windows or bins.
    """
    if not (np.array_equal(a.q_edges, b.q_edges) and np.array_equal(a.k_edges, b.k_edges)):
        raise ValueError("the two patterns cover different query/key windows")
    if a.weights.shape != b.weights.shape:
        raise ValueError(f"the two patterns have different heads ({a.weights.shape[0]} vs {b.weights.shape[0]})")
    return Pattern(a.weights - b.weights, a.q_edges, a.k_edges, np.minimum(a.n_queries, b.n_queries))


@dataclass(frozen=True)
class EvictedSpan:
    """An evicted key range ``[start, end)``, hidden from every query at or after ``from_step``."""

    start: int
    end: int
    from_step: int
    block: int | None


def evicted_spans(events: Any, k_lo: int, k_hi: int, q_lo: int, q_hi: int) -> list[EvictedSpan]:
    """The eviction events that hide keys of ``[k_lo, k_hi)`` from queries of ``[q_lo, q_hi)``, clipped to it.

    ``from_step`` is the first query the runtime's rule (:func:`memento_lens.runtime.masks.hides`) hides the
    range from: the firing position, or for a restart event the memento's ``<|summary_start|>``. ``events``
    is a Schedule or EvictionEvents (``masks.events_from_table`` rebuilds them from a run's events table).
    """
    out = []
    for ev in events.events if hasattr(events, "events") else events:
        if ev.end <= ev.start:
            continue
        s, e = max(ev.start, k_lo), min(ev.end, k_hi)
        first = ev.effective_from  # hides(ev, q) <=> q >= effective_from
        if s < e and first < q_hi and hides(ev, max(first, q_lo)):
            out.append(EvictedSpan(int(s), int(e), int(max(first, q_lo)), ev.block))
    return out


_CODE = {c: i for i, c in enumerate(MASS_CATEGORIES)}


def category_codes(
    roles: Sequence[str], blocks: Sequence[int], queries: Sequence[int], visible: np.ndarray
) -> np.ndarray:
    """:func:`mass_categories` for many queries at once, as indices into :data:`MASS_CATEGORIES`.

    Args:
        visible: ``[len(queries), n_tokens]`` bool, each query's visible positions.

    Returns:
        ``[len(queries), n_tokens]`` int8.
    """
    roles = np.asarray(roles, dtype=object)
    blocks = np.asarray(blocks, dtype=np.int64)
    n = len(roles)
    base = np.full(n, _CODE["delimiters"], dtype=np.int8)  # unknown roles count as structure
    for role, cat in (("prompt", "prompt"), ("memento", "mementos"), ("delimiter", "delimiters"), ("answer", "answer")):
        base[roles == role] = _CODE[cat]
    q = np.asarray(queries, dtype=np.int64)
    cur = np.where((q >= 0) & (q < n), blocks[np.clip(q, 0, max(n - 1, 0))], -1)
    codes = np.repeat(base[None, :], len(q), axis=0)
    is_block = (roles == "block")[None, :]
    current = is_block & (blocks[None, :] == cur[:, None]) & (cur[:, None] >= 0)
    codes[is_block & ~current] = _CODE["other visible blocks"]
    codes[current] = _CODE["current block"]
    hidden = ~np.asarray(visible, dtype=bool)
    after = np.arange(n)[None, :] > q[:, None]
    codes[hidden & ~after] = _CODE["evicted"]
    codes[hidden & after] = _CODE["future"]
    return codes


def head_mass_summary(
    rows: Mapping[tuple[int, int], np.ndarray],
    roles: Sequence[str],
    blocks: Sequence[int],
    visible: Callable[[int], np.ndarray] | Mapping[int, np.ndarray],
    queries: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per (layer, head), the attention mass on each :data:`MASS_CATEGORIES` category, averaged over queries.

    Args:
        rows: ``{(layer, query position): [heads, n_tokens] weights}`` (read a chunk at a time).
        roles, blocks: per position (``tokens.parquet``).
        visible: the query's visible positions (as for :func:`query_key_pattern`).
        queries: which captured queries to average over (None: all in ``rows``).

    Returns:
        one row per (layer, head): ``layer``, ``head``, ``n_queries``, then one column per category (mean mass;
        ``evicted`` / ``future`` ~0 unless a leak).
    """
    vis_of = visible.__getitem__ if isinstance(visible, Mapping) else visible
    want = None if queries is None else set(int(q) for q in queries)
    n, k = len(roles), len(MASS_CATEGORIES)
    by_layer: dict[int, list[int]] = {}
    for layer, q in sorted(rows):
        if want is None or q in want:
            by_layer.setdefault(int(layer), []).append(int(q))
    out = []
    for layer, qs in by_layer.items():
        layer_rows = _LayerView(rows, layer)
        heads = _n_heads(_LayerView(rows, layer, qs[:1]))
        sums = np.zeros((heads, k))
        buf = None
        for c in range(0, len(qs), _CHUNK // 2):
            cq = qs[c : c + _CHUNK // 2]
            w = buf = _window_rows(layer_rows, cq, heads, 0, n, buf)  # [c, heads, n]
            codes = category_codes(roles, blocks, cq, _window_visible(vis_of, cq, 0, n))
            onehot = np.zeros((len(cq), n, k), dtype=np.float32)
            onehot[np.arange(len(cq))[:, None], np.arange(n)[None, :], codes] = 1.0
            sums += np.matmul(w, onehot).sum(axis=0)
        mean = sums / len(qs)
        for h in range(heads):
            out.append({"layer": layer, "head": h, "n_queries": len(qs), **dict(zip(MASS_CATEGORIES, mean[h]))})
    return pd.DataFrame(out, columns=["layer", "head", "n_queries", *MASS_CATEGORIES])


class _LayerView(Mapping):
    """``{q: row}`` of one layer of a ``{(layer, q): row}`` mapping (lazy)."""

    def __init__(self, rows: Mapping, layer: int, qs: Sequence[int] | None = None):
        self._rows, self._layer, self._qs = rows, layer, qs

    def __getitem__(self, q: int) -> np.ndarray:
        return self._rows[(self._layer, q)]

    def window(self, qs: Sequence[int], heads: int, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        inner = getattr(self._rows, "layer_window", None)
        if inner is not None:
            return inner(self._layer, qs, heads, lo, hi, out)
        return _window_rows({q: self[q] for q in qs}, qs, heads, lo, hi)

    def __iter__(self):
        return iter(self._qs if self._qs is not None else [q for li, q in self._rows if li == self._layer])

    def __len__(self) -> int:
        return sum(1 for _ in self)


__all__ = [
    "MASS_CATEGORIES",
    "evicted_at_step",
    "visible_at_step",
    "mass_categories",
    "attention_mass_by_role",
    "Pattern",
    "edges",
    "query_edges",
    "query_key_pattern",
    "pattern_difference",
    "EvictedSpan",
    "evicted_spans",
    "category_codes",
    "head_mass_summary",
]
