"""Captured K/V (and attention weights) in a run directory: typed keys, a shard writer and a reader.

Layout (docs/ARCHITECTURE.md, schema version 1): ``kv/index.parquet`` with columns ``trace, variant, layer,
block, start, end, shard, key, value`` and tensors ``[1, kv_heads, end-start, d_head]`` in
``kv/shard-NNNNN.safetensors``; ``attention/index.parquet`` with ``trace, variant, layer, query_pos, shard,
tensor`` and tensors ``[1, heads, n_keys]``. Readers look tensors up by :class:`KVKey`, never by parsing
tensor names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import torch

from .rundir import schema
from .store import RunStore

VARIANTS = ("normal", "restart", "evicted_block")
KV_INDEX = schema.KV_INDEX.path
ATTN_INDEX = schema.ATTN_INDEX.path
KV_INDEX_COLUMNS = schema.KV_INDEX.names
ATTN_INDEX_COLUMNS = schema.ATTN_INDEX.names


@dataclass(frozen=True)
class KVKey:
    """Which captured K/V: a trace, a layer, a variant (normal / restart / evicted_block) and a 0-based block."""

    trace: str
    layer: int
    variant: str
    block: int

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")


@dataclass
class KVItem:
    """One captured K/V span. ``keys``/``values``: ``[1, kv_heads, end-start, d_head]``; positions ``[start, end)``."""

    key: KVKey
    start: int
    end: int
    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class AttnItem:
    """Attention weights of one query: ``weights`` ``[1, heads, n_keys]`` over all positions (evicted = 0)."""

    trace: str
    variant: str
    layer: int
    query_pos: int
    weights: torch.Tensor


@dataclass
class CaptureSink:
    """Collects items in memory until a part is written (``capture.RunWriter`` flushes it per batch)."""

    kv: dict[KVKey, KVItem] = field(default_factory=dict)
    attention: dict[tuple[str, str, int, int], AttnItem] = field(default_factory=dict)

    def add_kv(self, item: KVItem) -> None:
        self.kv[item.key] = item  # a later computation of the same span (restart) wins

    def add_attention(self, item: AttnItem) -> None:
        self.attention[(item.trace, item.variant, item.layer, item.query_pos)] = item

    def clear(self) -> None:
        self.kv.clear()
        self.attention.clear()

    def write_part(self, store: RunStore, part: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write this part's shards; return its kv and attention index rows."""
        kv_rows, attn_rows = [], []
        if self.kv:
            shard = f"kv/shard-{part:05d}.safetensors"
            tensors: dict[str, torch.Tensor] = {}
            for i, item in enumerate(self.kv.values()):
                kn, vn = f"k{i}", f"v{i}"
                tensors[kn], tensors[vn] = item.keys, item.values
                k = item.key
                kv_rows.append(
                    {
                        "trace": k.trace,
                        "variant": k.variant,
                        "layer": k.layer,
                        "block": k.block,
                        "start": item.start,
                        "end": item.end,
                        "shard": shard,
                        "key": kn,
                        "value": vn,
                    }
                )
            store.write_tensors(shard, tensors)
        if self.attention:
            shard = f"attention/shard-{part:05d}.safetensors"
            tensors = {}
            for i, item in enumerate(self.attention.values()):
                name = f"a{i}"
                tensors[name] = item.weights
                attn_rows.append(
                    {
                        "trace": item.trace,
                        "variant": item.variant,
                        "layer": item.layer,
                        "query_pos": item.query_pos,
                        "shard": shard,
                        "tensor": name,
                    }
                )
            store.write_tensors(shard, tensors)
        return schema.KV_INDEX.frame(kv_rows), schema.ATTN_INDEX.frame(attn_rows)


class KVReader:
    """Read captured K/V of a complete run by typed key.

    Example::

        kv = KVReader("runs/toy")
        k, v = kv.get(KVKey("toy-00000", layer=3, variant="normal", block=2))   # [1, kv_heads, n, d]
    """

    def __init__(self, run: str | Path | RunStore, device: str = "cpu", traces: Iterable[str] | None = None):
        """Args:
        traces: index only these traces (the full index is still read once, but only these are keyed).
        """
        self.store = run if isinstance(run, RunStore) else RunStore.open(run, verify=False, require_complete=True)
        self.device = device
        index = self.store.read_table(KV_INDEX) if self.store.has(KV_INDEX) else schema.KV_INDEX.empty()
        if traces is not None:
            index = index[index["trace"].isin(set(traces))].reset_index(drop=True)
        self.index = index
        self._rows: dict[KVKey, int] = {}
        for i, (t, layer, variant, block) in enumerate(
            zip(index["trace"].tolist(), index["layer"].tolist(), index["variant"].tolist(), index["block"].tolist())
        ):
            key = object.__new__(KVKey)  # index rows were validated when written
            object.__setattr__(key, "trace", t)
            object.__setattr__(key, "layer", int(layer))
            object.__setattr__(key, "variant", variant)
            object.__setattr__(key, "block", int(block))
            self._rows[key] = i
        self._cols = {c: index[c].tolist() for c in ("start", "end", "shard", "key", "value")}
        self._handles: dict[str, Any] = {}

    def __contains__(self, key: KVKey) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> Iterator[KVKey]:
        return iter(self._rows)

    def span(self, key: KVKey) -> tuple[int, int]:
        """Positions ``[start, end)`` the tensors cover."""
        i = self._row(key)
        return int(self._cols["start"][i]), int(self._cols["end"][i])

    def get(self, key: KVKey) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys, values)``, each ``[1, kv_heads, end-start, d_head]`` (keys post-RoPE, as cached)."""
        i = self._row(key)
        shard = self._cols["shard"][i]
        return self._load(shard, self._cols["key"][i]), self._load(shard, self._cols["value"][i])

    def _row(self, key: KVKey) -> int:
        try:
            return self._rows[key]
        except KeyError:
            raise KeyError(f"{self.store.path}: no captured K/V for {key}") from None

    def select(
        self,
        *,
        trace: str | None = None,
        layer: int | None = None,
        variant: str | None = None,
        block: int | None = None,
    ) -> list[KVKey]:
        """Every captured key matching the given fields (None = any), in index order."""
        return [
            k
            for k in self._rows
            if (trace is None or k.trace == trace)
            and (layer is None or k.layer == layer)
            and (variant is None or k.variant == variant)
            and (block is None or k.block == block)
        ]

    def _load(self, shard: str, name: str) -> torch.Tensor:
        from safetensors import safe_open

        handle = self._handles.get(shard)
        if handle is None:  # checksum verified once per shard, then the file stays open (memory-mapped)
            self.store.verify_file(shard)
            handle = self._handles[shard] = safe_open(str(self.store.path / shard), framework="pt", device=self.device)
        return handle.get_tensor(name)

    def attention(self, trace: str, variant: str, layer: int, query_pos: int) -> torch.Tensor:
        """``[1, heads, n_keys]`` attention weights of one captured query."""
        if not self.store.has(ATTN_INDEX):
            raise KeyError(f"{self.store.path}: no attention weights were captured")
        idx = self.store.read_table(ATTN_INDEX)
        hit = idx[(idx.trace == trace) & (idx.variant == variant) & (idx.layer == layer) & (idx.query_pos == query_pos)]
        if hit.empty:
            raise KeyError(
                f"{self.store.path}: no attention for trace {trace!r} {variant} layer {layer} query {query_pos}"
            )
        return self._load(hit.iloc[0].shard, hit.iloc[0].tensor)


__all__ = ["KVKey", "KVItem", "AttnItem", "CaptureSink", "KVReader", "VARIANTS", "KV_INDEX", "ATTN_INDEX"]
