"""One full forward pass under a dense visibility mask: the reference the incremental runtime is
checked against, and the fast path for teacher-forced replay of many short sequences (toy, probes).

Because a token's KV depends only on what it could see, a single forward with the schedule's
visibility mask yields exactly the KV (post-RoPE, as cached) that incremental generation with physical
eviction leaves in the cache (``memento-lens verify`` checks this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .hf_paths import CACHE_KEYS_ATTR, CACHE_VALUES_ATTR, cache_layers, output_cache
from .masks import additive_mask, visibility_mask
from .schedule import Schedule


@dataclass
class DenseOutput:
    """Result of :func:`dense_forward`.

    Attributes:
        logits: ``[batch, pos, vocab]``.
        keys, values: per layer ``[batch, kv_heads, pos, d_head]`` (keys post-norm, post-RoPE, as cached).
    """

    logits: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def stack_visibility(schedules: Sequence[Schedule], device: torch.device | str | None = None) -> torch.Tensor:
    """``[batch, pos, pos]`` bool visibility for schedules of equal length."""
    lengths = {s.n_tokens for s in schedules}
    if len(lengths) != 1:
        raise ValueError(f"dense replay needs equal-length sequences, got lengths {sorted(lengths)}")
    return torch.stack([visibility_mask(s, device=device) for s in schedules])


@torch.inference_mode()
def dense_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    visible: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    want_kv: bool = True,
) -> DenseOutput:
    """Full forward pass with a per-sequence visibility mask.

    Args:
        model: a HF causal LM.
        input_ids: ``[batch, pos]``.
        visible: ``[batch, pos, pos]`` or ``[pos, pos]`` bool, True where query attends to key.
        position_ids: ``[batch, pos]`` logical positions (default ``arange(pos)``).
        want_kv: also return the per-layer K/V.
    """
    b, t = input_ids.shape
    dtype = next(model.parameters()).dtype
    mask = additive_mask(visible.to(input_ids.device), dtype=dtype)
    if mask.shape[0] == 1 and b > 1:
        mask = mask.expand(b, -1, -1, -1)
    if position_ids is None:
        position_ids = torch.arange(t, device=input_ids.device).unsqueeze(0).expand(b, -1)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=want_kv)
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    if want_kv:
        for layer in cache_layers(output_cache(out)):
            keys.append(getattr(layer, CACHE_KEYS_ATTR))
            values.append(getattr(layer, CACHE_VALUES_ATTR))
    return DenseOutput(logits=out.logits, keys=keys, values=values)
