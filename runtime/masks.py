"""Dense equivalents of a schedule: visibility masks (pure functions). Cache occupancy: ``occupancy.py``.

Because positions are never renumbered after eviction, physical eviction from the cache equals a
logical attention mask. These functions give that mask so that a single full forward pass (or a
training step) sees exactly what the incremental runtime sees.
"""

from __future__ import annotations

import torch

from .schedule import Schedule


def visibility_mask(schedule: Schedule, device: torch.device | str | None = None) -> torch.Tensor:
    """Which keys each query's final KV was computed with.

    Returns:
        ``[n_tokens, n_tokens]`` bool, ``mask[q, k]`` True when token q attends to token k. Causal, minus
        every evicted range from the event's ``effective_from`` on (the firing token for normal evictions,
        the memento's ``<|summary_start|>`` for restart, whose KV is recomputed without the block).
    """
    n = schedule.n_tokens
    mask = torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    for ev in schedule.evictions:
        mask[ev.effective_from :, ev.start : ev.end] = False
    return mask


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
