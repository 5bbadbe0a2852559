"""The one visibility rule, and its dense forms. Cache occupancy: ``occupancy.py``.

Because positions are never renumbered after eviction, physical eviction from the cache equals a
logical attention mask. Every consumer (the runtime's dense forward, training masks, analyses, the app)
asks the same question through this module:

* :func:`hides` ``(event, step) -> bool``: the rule itself. An eviction event hides its ``[start, end)``
  range from every query at or after its ``effective_from``: the firing position for compactions and
  deferred flushes, the memento's ``<|summary_start|>`` (``rewind_to``) for restart events, whose memento
  KV is recomputed without the block.
* :func:`visible_at` ``(events, step, n_tokens) -> np.ndarray[bool] [n_tokens]``: the positions ``<= step``
  whose KV token ``step`` is (finally) computed with. Row ``step`` of :func:`visibility_mask`.
* :func:`evicted_at` ``(events, step, n_tokens) -> np.ndarray[bool] [n_tokens]``: the positions hidden at
  ``step`` (``visible_at`` is ``arange(n) <= step`` minus these).
* :func:`visibility_mask` ``(schedule) -> torch.BoolTensor [n_tokens, n_tokens]``: all rows at once.
* :func:`events_from_table` ``(table, trace=None) -> tuple[EvictionEvent, ...]``: rebuild the events of a
  run from its ``events`` table rows (columns: ``runtime/rundir/schema.py`` ``EVENTS``, ``rewind_to``
  included), so a reader of a run directory applies exactly the rule the runtime applied.

``events`` may be a :class:`~memento_lens.runtime.schedule.Schedule` or any iterable of
:class:`~memento_lens.runtime.schedule.EvictionEvent`; events with an empty range (warnings, forced block
ends) hide nothing.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .schedule import EventKind, EvictionEvent, Schedule

Events = Schedule | Iterable[EvictionEvent]


def hides(event: EvictionEvent, step: int) -> bool:
    """Whether ``event``'s range is gone for the query at position ``step`` (the one visibility rule)."""
    return event.end > event.start and event.effective_from <= step


def _evictions(events: Events) -> Iterator[EvictionEvent]:
    evs = events.events if isinstance(events, Schedule) else events
    return (e for e in evs if e.end > e.start)


def evicted_at(events: Events, step: int, n_tokens: int) -> np.ndarray:
    """``[n_tokens]`` bool: positions hidden from the query at ``step`` (ranges clipped to ``[0, n_tokens)``)."""
    gone = np.zeros(n_tokens, dtype=bool)
    for ev in _evictions(events):
        if hides(ev, step):
            gone[max(0, ev.start) : max(0, min(n_tokens, ev.end))] = True
    return gone


def visible_at(events: Events, step: int, n_tokens: int) -> np.ndarray:
    """``[n_tokens]`` bool: positions ``<= step`` still visible when token ``step`` is processed.

    Equals ``visibility_mask(schedule)[step].numpy()`` for the schedule the events came from.
    """
    return (np.arange(n_tokens) <= step) & ~evicted_at(events, step, n_tokens)


def visibility_mask(schedule: Schedule, device: torch.device | str | None = None) -> torch.Tensor:
    """Which keys each query's final KV was computed with: :func:`visible_at` for every step at once.

    Returns:
        ``[n_tokens, n_tokens]`` bool, ``mask[q, k]`` True when token q attends to token k. Causal, minus
        every evicted range for the queries :func:`hides` says it is gone for (``q >= effective_from``).
    """
    n = schedule.n_tokens
    mask = torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    for ev in _evictions(schedule):
        # hides(ev, q) <=> q >= ev.effective_from: the rows of the rule, as one slice.
        mask[max(0, ev.effective_from) :, ev.start : ev.end] = False
    return mask


def _opt_int(value: Any) -> int | None:
    """A nullable integer cell (None, NaN, pandas.NA, -1 for ``block``) -> int or None."""
    if value is None:
        return None
    try:
        if isinstance(value, float) and math.isnan(value):
            return None
        return int(value)
    except (TypeError, ValueError):  # pandas.NA and friends
        return None


def events_from_table(table: Any, trace: str | None = None) -> tuple[EvictionEvent, ...]:
    """Rebuild :class:`EvictionEvent` s from ``events`` table rows (a DataFrame or a mapping of columns).

    Args:
        table: rows with the ``EVENTS`` columns (``kind``, ``position``, ``start``, ``end``, ``block``;
            optional ``rewind_to`` and ``message``, missing in runs written before they existed).
        trace: keep only this trace's rows (needs a ``trace`` column); None keeps every row.

    Returns:
        the events in table order; ``block = -1`` and null ``rewind_to`` read back as None.
    """
    cols = {c: list(table[c]) for c in ("kind", "position", "start", "end", "block")}
    n = len(cols["kind"])
    rewind = list(table["rewind_to"]) if "rewind_to" in table else [None] * n
    message = list(table["message"]) if "message" in table else [None] * n
    keep = [True] * n if trace is None else [t == trace for t in table["trace"]]
    out = []
    for i in range(n):
        if not keep[i]:
            continue
        block = _opt_int(cols["block"][i])
        msg = message[i]
        out.append(
            EvictionEvent(
                EventKind(cols["kind"][i]),
                int(cols["position"][i]),
                int(cols["start"][i]),
                int(cols["end"][i]),
                None if block is None or block < 0 else block,
                rewind_to=_opt_int(rewind[i]),
                message=msg if isinstance(msg, str) else None,
            )
        )
    return tuple(out)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[q, k]`` or ``[b, q, k]`` bool -> ``[b, 1, q, k]`` additive float mask (0 visible, dtype-min hidden).

    transformers silently ignores boolean 4D masks under eager attention; an additive float mask is
    honoured by eager and sdpa alike.
    """
    if visible.dim() == 2:
        visible = visible.unsqueeze(0)
    out = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    out.masked_fill_(~visible, torch.finfo(dtype).min)
    return out.unsqueeze(1)


__all__ = ["hides", "visible_at", "evicted_at", "visibility_mask", "events_from_table", "additive_mask"]
