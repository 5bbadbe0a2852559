"""The KV cache with a logical position per physical slot: physical eviction on any HF causal LM.

:class:`SlotCache` wraps a batched ``DynamicCache`` and remembers the logical position of every physical slot.
Evicting a range marks its slots dead; :meth:`SlotCache.compact` removes them from every layer (the tensors are
sliced, so the memory is really freed). Later tokens are fed with explicit logical ``position_ids``, so RoPE
sees the positions the model was trained with. Used by generation (``generate.py``) and replay.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .config import ConfigError
from .hf_paths import (
    CACHE_DATA_KWARG,
    CACHE_INPUT_KWARG,
    CACHE_KEYS_ATTR,
    CACHE_VALUES_ATTR,
    FULL_ATTENTION,
    LAYER_TYPES_ATTR,
    LOGITS_TO_KEEP_KWARG,
    cache_layers,
)

DEAD = -1  # logical position of a physical slot that holds nothing (evicted, padding)


def check_runtime_model(model: Any) -> None:
    """Physical slicing needs plain full-attention layers (no sliding-window ring buffers)."""
    types = getattr(model.config, LAYER_TYPES_ATTR, None)
    if types and any(t != FULL_ATTENTION for t in types):
        raise ConfigError(
            f"model has non-full-attention layers ({sorted(set(types))}); the memento runtime "
            "supports full-attention decoders only"
        )


class SlotCache:
    """A batched ``DynamicCache`` plus the logical position of each physical slot.

    Attributes:
        cache: the HF cache; per layer ``[batch, kv_heads, slots, d_head]``.
        pos: ``[batch, slots]`` int64 (CPU), logical position per slot, :data:`DEAD` for masked slots.
        peak_bytes: the largest K+V byte count the cache held after any forward.
    """

    def __init__(self, model: Any, batch: int, cache: Any = None, pos: torch.Tensor | None = None):
        from transformers import DynamicCache

        self.model = model
        self.cache = cache if cache is not None else DynamicCache(config=model.config)
        self.pos = pos if pos is not None else torch.empty(batch, 0, dtype=torch.long)
        self.peak_bytes = 0
        self._dirty = bool((self.pos < 0).any())  # any dead slot (evicted or padding) not yet compacted

    # -- size --------------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    @property
    def n_slots(self) -> int:
        return self.pos.shape[1]

    def alive(self) -> torch.Tensor:
        return self.pos >= 0

    def held(self) -> list[int]:
        """Tokens held per row (slots that are not dead)."""
        if not self._dirty:
            return [self.n_slots] * self.batch
        return (self.pos >= 0).sum(1).tolist()

    def layers_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for layer in cache_layers(self.cache):
            k = getattr(layer, CACHE_KEYS_ATTR, None)
            if k is None or k.numel() == 0:
                continue
            out.append((k, getattr(layer, CACHE_VALUES_ATTR)))
        return out

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers_kv())

    # -- forward -------------------------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None = None, logits: str = "last"
    ) -> torch.Tensor | None:
        """Feed ``input_ids`` ``[batch, q]`` at logical ``positions`` ``[batch, q]``; append their KV.

        Args:
            valid: ``[batch, q]`` bool, False for right padding (its slots are dead).
            logits: ``all`` -> ``[batch, q, vocab]``; ``last`` -> ``[batch, vocab]`` at each row's last valid
                token; ``none`` -> None.
        """
        b, q = input_ids.shape
        device = input_ids.device
        padded = valid is not None and not bool(valid.all())
        holes = padded or self._dirty
        mask = None
        if holes:
            v = valid if valid is not None else torch.ones(b, q, dtype=torch.bool)
            mask = torch.cat([self.pos >= 0, v.cpu()], dim=1).to(device=device, dtype=torch.long)
        keep = 0 if (logits == "all" or (logits == "last" and padded)) else 1
        out = self.model(
            input_ids=input_ids,
            position_ids=positions.to(device),
            attention_mask=mask,
            use_cache=True,
            **{CACHE_INPUT_KWARG: self.cache, LOGITS_TO_KEEP_KWARG: keep},
        )
        new_pos = positions.detach().to("cpu", torch.long).clone()
        if padded:
            new_pos[~valid.cpu()] = DEAD
            self._dirty = True
        self.pos = torch.cat([self.pos, new_pos], dim=1)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())
        if logits == "none":
            return None
        if logits == "all":
            return out.logits
        if not padded:
            return out.logits[:, -1]
        last = valid.long().sum(1).to(out.logits.device) - 1
        return out.logits[torch.arange(b, device=out.logits.device), last]

    # -- eviction -----------------------------------------------------------------------------------------
    def drop_range(self, start: int, end: int, rows: torch.Tensor | Sequence[int] | None = None) -> int:
        """Mark slots whose logical position lies in ``[start, end)`` dead (all rows, or ``rows``)."""
        hit = (self.pos >= start) & (self.pos < end)
        if rows is not None:
            sel = torch.zeros(self.batch, 1, dtype=torch.bool)
            sel[torch.as_tensor(list(rows), dtype=torch.long)] = True
            hit &= sel
        n = int(hit.sum())
        if n:
            self.pos[hit] = DEAD
            self._dirty = True
        return n

    def compact(self) -> None:
        """Physically remove dead slots from every layer (rows keep their own slot order)."""
        if not self._dirty:
            return
        self._dirty = False
        alive = self.pos >= 0
        if bool(alive.all()):
            return
        counts = alive.sum(1)
        width = int(counts.max()) if self.batch else 0
        if self.batch == 1:
            idx = alive[0].nonzero().squeeze(1)
            self._reindex(lambda t: t.index_select(2, idx.to(t.device)))
            self.pos = self.pos[:, idx]
            return
        idx = torch.zeros(self.batch, width, dtype=torch.long)
        new_pos = torch.full((self.batch, width), DEAD, dtype=torch.long)
        for r in range(self.batch):
            keep = alive[r].nonzero().squeeze(1)
            idx[r, : len(keep)] = keep
            new_pos[r, : len(keep)] = self.pos[r, keep]

        def gather(t: torch.Tensor) -> torch.Tensor:
            i = idx.to(t.device)[:, None, :, None].expand(t.shape[0], t.shape[1], width, t.shape[3])
            return t.gather(2, i)

        self._reindex(gather)
        self.pos = new_pos
        self._dirty = bool((new_pos < 0).any())  # rows shorter than the widest keep padding slots

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` of the batch (finished sequences leave)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        self._reindex(lambda t: t.index_select(0, idx.to(t.device)))
        self.pos = self.pos[idx]

    def _reindex(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for layer in cache_layers(self.cache):
            k = getattr(layer, CACHE_KEYS_ATTR, None)
            if k is None or k.numel() == 0:
                continue
            setattr(layer, CACHE_KEYS_ATTR, fn(k))
            setattr(layer, CACHE_VALUES_ATTR, fn(getattr(layer, CACHE_VALUES_ATTR)))

    # -- reading ----------------------------------------------------------------------------------------------
    def slots_of(self, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``[batch, n]`` physical slot of each logical position (raises if one is not cached)."""
        want = torch.as_tensor(positions, dtype=torch.long).view(1, 1, -1)
        hit = self.pos.unsqueeze(2) == want  # [b, slots, n]
        found = hit.any(1)
        if not bool(found.all()):
            missing = want.view(-1)[~found.all(0)].tolist()
            raise KeyError(f"positions {missing[:8]} are not in the cache")
        return hit.float().argmax(1)

    def gather(
        self, positions: Sequence[int] | torch.Tensor, layers: Sequence[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K/V at logical ``positions``: per selected layer ``([b, kv_heads, n, d], [b, kv_heads, n, d])`` copies."""
        slots = self.slots_of(positions)
        out = []
        kv = self.layers_kv()
        for li in range(len(kv)) if layers is None else layers:
            k, v = kv[li]
            i = slots.to(k.device)[:, None, :, None].expand(k.shape[0], k.shape[1], slots.shape[1], k.shape[3])
            out.append((k.gather(2, i), v.gather(2, i)))
        return out

    def subset(self, keep: torch.Tensor) -> "SlotCache":
        """A compacted copy holding only slots where ``keep`` ``[batch, slots]`` is True (for counterfactuals)."""
        from transformers import DynamicCache

        pos = torch.where(keep, self.pos, torch.full_like(self.pos, DEAD))
        tmp = SlotCache(self.model, self.batch, cache=self.cache, pos=pos)
        data: list[tuple[torch.Tensor, torch.Tensor]] = []
        saved = [(getattr(l, CACHE_KEYS_ATTR), getattr(l, CACHE_VALUES_ATTR)) for l in cache_layers(self.cache)]
        try:
            tmp.compact()  # rebinds layer tensors to gathered copies ...
            data = [(k, v) for k, v in tmp.layers_kv()]
        finally:  # ... so put the originals back
            for layer, (k, v) in zip(cache_layers(self.cache), saved):
                setattr(layer, CACHE_KEYS_ATTR, k)
                setattr(layer, CACHE_VALUES_ATTR, v)
        new = DynamicCache(**{CACHE_DATA_KWARG: data}) if data else DynamicCache(config=self.model.config)
        return SlotCache(self.model, self.batch, cache=new, pos=tmp.pos)


__all__ = ["DEAD", "SlotCache", "check_runtime_model"]
