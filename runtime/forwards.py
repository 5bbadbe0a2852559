"""The runtime's partial forwards: a shared prefix computed once, the first N layers only, batches that stream.

Probes and ablations read K/V at a few positions of many sequences that share most of their tokens (a passcode
substituted into one block of one trace). Three facts make that cheap, and this module owns all three:

* **Shared prefix.** Rows identical before position ``p`` have identical K/V there (K/V at a position depend
  only on the tokens it sees, and visibility is causal). :func:`prefix_kv` computes them once for one row;
  :func:`forward_from_prefix` expands them to a batch and forwards only positions ``p ..``.
* **First N layers.** Layer ``l``'s K/V depend on layers ``<= l`` only. :class:`StopAfterLayer` is a cache that
  ends the forward right after layer ``l`` stored its K/V (nothing of layer ``l``'s attention output, MLP,
  later layers or the vocabulary projection runs). :func:`first_layers` truncates the decoder instead, for
  callers that need the model's outputs of the first ``n`` layers.
* **Sample-independent positions.** :func:`sample_dependent` marks the positions whose K/V can depend on the
  tokens that differ between rows (transitively through the visibility mask). Positions it leaves unmarked
  have the same K/V in every row (e.g. every memento in the restart world, which never sees the passcode's
  block), so one row computes them.

Shapes (TransformerLens-style, one KV layout everywhere): ``input_ids [batch, pos]``; ``visible [pos, pos]``
bool (query row attends to key column); K/V ``[batch, kv_heads, pos, d_head]``, keys post-norm and post-RoPE as
cached. Everything runs where the model's parameters are (or on ``device``) in the model's dtype; nothing here
picks a device or dtype.

:func:`kv_batches` is the one loop over a sample set: a function of (model, token ids, visibility, layers,
batch), so callers can shard samples across workers and stream each batch out (bounded memory).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .hf_paths import (
    CACHE_DATA_KWARG,
    CACHE_INPUT_KWARG,
    LAYER_TYPES_ATTR,
    decoder_layers_path,
)
from .masks import additive_mask

# One prefix row expanded to the batch plus the batch's own K/V, per layer run, must fit in this (bytes):
DEFAULT_MEMORY_BUDGET = 1 << 30


@contextlib.contextmanager
def first_layers(model: torch.nn.Module, n: int) -> Iterator[None]:
    """Run only the first ``n`` decoder layers inside the block; the model is restored in ``finally``."""
    *path, attr = decoder_layers_path(model).split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    full = getattr(parent, attr)
    cfg = model.config
    saved = (cfg.num_hidden_layers, getattr(cfg, LAYER_TYPES_ATTR, None))
    if n >= len(full):
        yield
        return
    try:
        setattr(parent, attr, full[:n])
        cfg.num_hidden_layers = n
        if saved[1] is not None:
            setattr(cfg, LAYER_TYPES_ATTR, list(saved[1])[:n])
        yield
    finally:
        setattr(parent, attr, full)
        cfg.num_hidden_layers = saved[0]
        if saved[1] is not None:
            setattr(cfg, LAYER_TYPES_ATTR, saved[1])


class _KVComplete(Exception):
    """Raised by :class:`StopAfterLayer` once the last wanted layer's K/V are stored (ends the forward)."""


def _stop_cache(stop_layer: int, data: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None):
    from transformers import DynamicCache

    class StopAfterLayer(DynamicCache):
        """A ``DynamicCache`` that ends the forward once layer ``stop_layer`` has stored its K/V."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
            if layer_idx >= stop_layer:
                raise _KVComplete
            return out

    return StopAfterLayer(**({CACHE_DATA_KWARG: list(data)} if data else {}))


def _kv_forward(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    n_layers: int,
    past: Sequence[tuple[torch.Tensor, torch.Tensor]] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward ``ids`` after ``past`` (per layer ``(k, v)``) and return K/V of the first ``n_layers`` layers."""
    from .hf_paths import CACHE_KEYS_ATTR, CACHE_VALUES_ATTR, cache_layers

    n_layers = min(int(n_layers), int(model.config.num_hidden_layers))
    cache = _stop_cache(n_layers - 1, past)
    base = getattr(model, decoder_layers_path(model).split(".")[0])  # the decoder without the vocabulary head
    try:
        base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{CACHE_INPUT_KWARG: cache})
    except _KVComplete:
        pass
    layers = cache_layers(cache)[:n_layers]
    return [getattr(ly, CACHE_KEYS_ATTR) for ly in layers], [getattr(ly, CACHE_VALUES_ATTR) for ly in layers]


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.inference_mode()
def prefix_kv(
    model: torch.nn.Module, prefix_ids: torch.Tensor, visible: torch.Tensor, n_layers: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(keys, values)`` ``[1, kv_heads, p, d_head]`` of ``prefix_ids [p]`` under ``visible[:p, :p]``.

    ``n_layers``: only the first ``n_layers`` layers (default all).
    """
    p = int(prefix_ids.shape[0])
    dev = prefix_ids.device
    mask = additive_mask(visible[:p, :p].to(dev), dtype=_dtype(model))
    pos = torch.arange(p, device=dev).unsqueeze(0)
    keys, values = _kv_forward(
        model, prefix_ids.unsqueeze(0), mask, pos, n_layers or model.config.num_hidden_layers, None
    )
    return list(zip(keys, values))


@torch.inference_mode()
def forward_from_prefix(
    model: torch.nn.Module,
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
    suffix_ids: torch.Tensor,
    visible: torch.Tensor,
    n_layers: int | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """K/V of ``prefix + suffix`` for a batch, computing only the suffix.

    Args:
        prefix: from :func:`prefix_kv` (``p`` positions, one row shared by every row of the batch; may be empty).
        suffix_ids: ``[b, s]`` tokens at positions ``p .. p + s - 1``.
        visible: ``[p + s, p + s]`` (or larger) bool visibility of the whole sequence.
        n_layers: the first ``n_layers`` layers only (default: as many as ``prefix`` holds, else all).
    Returns:
        per layer keys and values ``[b, kv_heads, p + s, d_head]`` (post-RoPE, as cached).
    """
    b, s = suffix_ids.shape
    dev = suffix_ids.device
    p = int(prefix[0][0].shape[2]) if prefix else 0
    n = n_layers or (len(prefix) if prefix else model.config.num_hidden_layers)
    data = [(k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous()) for k, v in prefix[:n]]
    mask = additive_mask(visible[p : p + s, : p + s].to(dev), dtype=_dtype(model)).expand(b, -1, -1, -1)
    pos = torch.arange(p, p + s, device=dev).unsqueeze(0).expand(b, -1)
    return _kv_forward(model, suffix_ids, mask, pos, n, data or None)


def sample_dependent(visible: torch.Tensor | np.ndarray, varying: np.ndarray) -> np.ndarray:
    """``[T]`` bool: positions whose K/V (at some layer) can depend on the tokens at ``varying``.

    A position depends on the tokens it sees, and on everything those positions depend on (through the layers),
    so the closure over the causal visibility is taken in one pass in position order.

    Args:
        visible: ``[T, T]`` bool visibility.
        varying: ``[T]`` bool (or position indices): tokens that differ between rows.
    """
    vis = visible.cpu().numpy() if isinstance(visible, torch.Tensor) else np.asarray(visible)
    t = vis.shape[0]
    dep = np.zeros(t, dtype=bool)
    v = np.asarray(varying)
    dep[v if v.dtype != bool else np.flatnonzero(v[:t])] = True
    for q in range(t):
        if not dep[q]:
            dep[q] = bool((vis[q, :q] & dep[:q]).any())
    return dep


def rows_per_batch(
    model: torch.nn.Module, n_layers: int, length: int, recomputed: int, budget: int = DEFAULT_MEMORY_BUDGET
) -> int:
    """Rows per forward so one batch's working memory stays under ``budget`` bytes (at least 1).

    Per row: the expanded cache (K and V of ``n_layers`` layers over ``length`` positions), the attention scores
    and mask of the ``recomputed`` positions against ``length`` keys, and a few hidden-size activations.
    """
    cfg = model.config
    item = torch.finfo(_dtype(model)).bits // 8
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    d_head = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    inter = int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size))
    cache = 2 * n_layers * kv_heads * length * d_head * item
    scores = (heads + 1) * recomputed * length * item  # scores of one layer + the additive mask
    acts = recomputed * (4 * cfg.hidden_size + 2 * inter) * item
    return max(1, int(budget // max(1, cache + scores + acts)))


@dataclass
class KVBatch:
    """K/V of rows ``start .. stop`` of a sample set (see :func:`kv_batches`).

    Attributes:
        keys, values: per layer run, ``[stop - start, kv_heads, length, d_head]`` (``length``: the positions
            asked for, from 0).
    """

    start: int
    stop: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def kv_batches(
    model: torch.nn.Module,
    input_ids: torch.Tensor | np.ndarray,
    visible: torch.Tensor,
    n_layers: int,
    *,
    length: int | None = None,
    prefix_len: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[KVBatch]:
    """K/V of the first ``n_layers`` layers at positions ``0 .. length - 1`` of every row, one batch at a time.

    Args:
        input_ids: ``[n, T]``; rows share their first ``prefix_len`` tokens (checked), whose K/V are computed once.
        visible: ``[T, T]`` bool, one visibility for every row.
        length: positions needed (default ``T``): later positions never change earlier K/V.
        batch_size: rows per forward; ``None`` (or more than fit) is capped by ``memory_budget``
            (:func:`rows_per_batch`).
        device: where the forward runs (default: the model's device).
    Raises:
        ValueError: ``visible`` does not match ``T``, or rows differ within ``prefix_len``.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    n, t = ids.shape
    if tuple(visible.shape) != (t, t):
        raise ValueError(f"visibility mask {tuple(visible.shape)} does not match sequence length {t}")
    length = t if length is None else int(length)
    if not 0 <= prefix_len < length:
        raise ValueError(f"prefix_len {prefix_len} outside 0 .. {length - 1}")
    if prefix_len and not bool((ids[:, :prefix_len] == ids[:1, :prefix_len]).all()):
        raise ValueError(f"samples differ within the first {prefix_len} tokens: no shared prefix to reuse")
    n_layers = min(int(n_layers), int(model.config.num_hidden_layers))
    fit = rows_per_batch(model, n_layers, length, length - prefix_len, memory_budget)
    bs = max(1, min(batch_size or fit, fit))
    vis = visible[:length, :length].to(dev)
    with torch.inference_mode():
        prefix = prefix_kv(model, ids[0, :prefix_len].to(dev), vis, n_layers) if prefix_len else []
        for s in range(0, n, bs):
            keys, values = forward_from_prefix(model, prefix, ids[s : s + bs, prefix_len:length].to(dev), vis, n_layers)
            yield KVBatch(s, min(s + bs, n), keys, values)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "KVBatch",
    "first_layers",
    "forward_from_prefix",
    "kv_batches",
    "prefix_kv",
    "rows_per_batch",
    "sample_dependent",
]
