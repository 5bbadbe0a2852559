"""Captured K/V and attention weights: typed keys and the in-memory items a capture collects.

Layout on disk (``schema.KV_INDEX`` / ``schema.ATTN_INDEX``): an index table per kind and tensors in
safetensors shards, K/V ``[1, kv_heads, end-start, d_head]`` (keys post-RoPE, as cached), attention
``[1, heads, n_keys]`` over all positions (evicted = 0). Readers look tensors up by :class:`KVKey`
(``RunReader.kv``), never by parsing tensor names; ``writer.write_capture_part`` writes a sink's items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VARIANTS = ("normal", "restart", "evicted_block")


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
    keys: Any
    values: Any


@dataclass
class AttnItem:
    """Attention weights of one query: ``weights`` ``[1, heads, n_keys]`` over all positions (evicted = 0)."""

    trace: str
    variant: str
    layer: int
    query_pos: int
    weights: Any


@dataclass
class CaptureSink:
    """Collects items in memory until the run writer writes them as one part (``RunWriter.write_part``)."""

    kv: dict[KVKey, KVItem] = field(default_factory=dict)
    attention: dict[tuple[str, str, int, int], AttnItem] = field(default_factory=dict)

    def add_kv(self, item: KVItem) -> None:
        self.kv[item.key] = item  # a later computation of the same span (restart) wins

    def add_attention(self, item: AttnItem) -> None:
        self.attention[(item.trace, item.variant, item.layer, item.query_pos)] = item

    def clear(self) -> None:
        self.kv.clear()
        self.attention.clear()


__all__ = ["KVKey", "KVItem", "AttnItem", "CaptureSink", "VARIANTS"]
