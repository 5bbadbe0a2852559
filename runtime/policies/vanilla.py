"""Vanilla attention: nothing is ever evicted (``keep_last_n_blocks = -1``, or no compaction trigger)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import EvictionPolicy


@dataclass(frozen=True)
class Vanilla(EvictionPolicy):
    """Never evicts: every block stays in the cache (the baseline of every KV-occupancy ratio)."""

    name = "vanilla"
