"""Erased-block residue: how far a memento's KV computed with its block visible (normal) is from the same
tokens recomputed without it (restart). Pure functions on tensors and tables (no streamlit, no I/O), so a
notebook and the app's residue page compute the same numbers.

KV tensors are ``[batch, kv_heads, pos, d_head]`` (batch 1 in captures); a captured entry comes with the
positions ``(start, end)`` it covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

RESIDUE_COLUMNS = ["block", "layer", "head", "rel_l2", "cosine", "start", "end"]

# A captured KV entry as readers return it: (keys, values, (start, end)).
KVEntry = tuple[Any, Any, tuple[int, int]]


@dataclass(frozen=True)
class Residue:
    """How far the normal memento KV is from its restart recomputation, per head.

    Attributes:
        rel_l2: ``[heads]`` ``||normal - restart|| / ||normal||`` over positions x d_head.
        cosine: ``[heads]`` cosine similarity of the flattened ``[pos, d_head]`` tensors.
    """

    rel_l2: np.ndarray
    cosine: np.ndarray


def residue(normal: torch.Tensor, restart: torch.Tensor, eps: float = 1e-12) -> Residue:
    """Per-head residue of an erased block in a memento's KV.

    Args:
        normal, restart: ``[1, kv_heads, pos, d_head]`` (same shape; the memento's K or V computed with
            its block visible / recomputed without it).
    """
    if normal.shape != restart.shape:
        raise ValueError(f"normal {tuple(normal.shape)} and restart {tuple(restart.shape)} KV differ in shape")
    heads = normal.shape[1]
    a = normal.detach().to(torch.float64).mean(0).reshape(heads, -1)  # batch 1 in captures
    b = restart.detach().to(torch.float64).mean(0).reshape(heads, -1)
    diff = torch.linalg.vector_norm(a - b, dim=-1)
    na = torch.linalg.vector_norm(a, dim=-1)
    nb = torch.linalg.vector_norm(b, dim=-1)
    rel = diff / na.clamp_min(eps)
    cos = (a * b).sum(-1) / (na * nb).clamp_min(eps)
    return Residue(rel_l2=rel.numpy(), cosine=cos.numpy())


def residue_per_position(normal: torch.Tensor, restart: torch.Tensor, head: int, eps: float = 1e-12) -> np.ndarray:
    """``[pos]`` relative L2 distance of each memento position's K (or V) vector for one head."""
    a = normal[0, head].detach().to(torch.float64)
    b = restart[0, head].detach().to(torch.float64)
    return (torch.linalg.vector_norm(a - b, dim=-1) / torch.linalg.vector_norm(a, dim=-1).clamp_min(eps)).numpy()


def align_ranges(a: tuple[int, int], b: tuple[int, int]) -> tuple[slice, slice] | None:
    """Slices into two position ranges ``[start, end)`` that select their overlap (None if disjoint)."""
    s, e = max(a[0], b[0]), min(a[1], b[1])
    if e <= s:
        return None
    return slice(s - a[0], e - a[0]), slice(s - b[0], e - b[0])


def _pick(entry: KVEntry, which: str) -> Any:
    if which not in ("keys", "values"):
        raise ValueError(f"which must be 'keys' or 'values', got {which!r}")
    return entry[0] if which == "keys" else entry[1]


def residue_table(entries: Mapping[Any, KVEntry], trace: str, which: str = "keys") -> pd.DataFrame:
    """Per (block, layer, head) of one trace: relative L2 and cosine between normal and restart memento K (or V).

    Args:
        entries: ``{KVKey: (keys, values, (start, end))}`` as a run reader returns them (keys with ``trace``,
            ``layer``, ``variant``, ``block``); entries of other traces or variants are ignored.
        which: ``keys`` or ``values``.

    Returns:
        :data:`RESIDUE_COLUMNS`; ``start``/``end`` = the positions both variants cover. Mementos captured in
        only one variant, or whose two captures do not overlap, are left out.
    """
    got = {
        (int(k.block), int(k.layer), k.variant): v
        for k, v in entries.items()
        if k.trace == trace and k.variant in ("normal", "restart")
    }
    rows = []
    for block, layer in sorted({(b, l) for b, l, _ in got}):
        n, r = got.get((block, layer, "normal")), got.get((block, layer, "restart"))
        if n is None or r is None:
            continue
        sl = align_ranges(n[2], r[2])
        if sl is None:
            continue
        res = residue(_pick(n, which)[:, :, sl[0]], _pick(r, which)[:, :, sl[1]])
        for h in range(len(res.rel_l2)):
            rows.append(
                {
                    "block": block,
                    "layer": layer,
                    "head": h,
                    "rel_l2": float(res.rel_l2[h]),
                    "cosine": float(res.cosine[h]),
                    "start": max(n[2][0], r[2][0]),
                    "end": min(n[2][1], r[2][1]),
                }
            )
    return pd.DataFrame(rows, columns=RESIDUE_COLUMNS)


def residue_positions(normal: KVEntry, restart: KVEntry, which: str, head: int) -> tuple[list[int], np.ndarray]:
    """Positions both captures cover and, per position, the relative L2 residue of one head's K (or V)."""
    sl = align_ranges(normal[2], restart[2])
    if sl is None:
        return [], np.zeros(0)
    vals = residue_per_position(_pick(normal, which)[:, :, sl[0]], _pick(restart, which)[:, :, sl[1]], head)
    return list(range(max(normal[2][0], restart[2][0]), min(normal[2][1], restart[2][1]))), vals


__all__ = [
    "RESIDUE_COLUMNS",
    "Residue",
    "residue",
    "residue_per_position",
    "residue_positions",
    "residue_table",
    "align_ranges",
]
