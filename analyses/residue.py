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

# A captured KV entry: the run reader's ``KVEntry`` or a plain ``(keys, values, (start, end))`` tuple.
KVEntry = Any


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


def _split(entry: KVEntry, which: str) -> tuple[Any, tuple[int, int]]:
    """(the K or V tensor, (start, end)) of a captured entry."""
    if which not in ("keys", "values"):
        raise ValueError(f"which must be 'keys' or 'values', got {which!r}")
    k, v, (start, end) = entry
    return (k if which == "keys" else v), (int(start), int(end))


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
        if (block, layer, "normal") not in got or (block, layer, "restart") not in got:
            continue
        (a, ra), (b, rb) = _split(got[(block, layer, "normal")], which), _split(got[(block, layer, "restart")], which)
        sl = align_ranges(ra, rb)
        if sl is None:
            continue
        res = residue(a[:, :, sl[0]], b[:, :, sl[1]])
        for h in range(len(res.rel_l2)):
            rows.append(
                {
                    "block": block,
                    "layer": layer,
                    "head": h,
                    "rel_l2": float(res.rel_l2[h]),
                    "cosine": float(res.cosine[h]),
                    "start": max(ra[0], rb[0]),
                    "end": min(ra[1], rb[1]),
                }
            )
    return pd.DataFrame(rows, columns=RESIDUE_COLUMNS)


def run_residue_table(run: Any, trace: str, which: str = "keys") -> pd.DataFrame:
    """:func:`residue_table` of one trace of a run, read through the run reader (a notebook:
    ``run_residue_table(open_run(path), "gen-00000")``).

    Args:
        run: a :class:`~memento_lens.runtime.rundir.reader.RunReader` (or anything with its ``kv_index(trace)``
            and ``kv_many(keys, index)``).
    """
    from memento_lens.runtime.rundir.kv import KVKey

    idx = run.kv_index(trace)
    pairs = idx[idx["variant"].isin(["normal", "restart"])]
    keys = [KVKey(trace, int(r.layer), r.variant, int(r.block)) for r in pairs.itertuples(index=False)]
    return residue_table(run.kv_many(keys, pairs), trace, which)


def residue_positions(normal: KVEntry, restart: KVEntry, which: str, head: int) -> tuple[list[int], np.ndarray]:
    """Positions both captures cover and, per position, the relative L2 residue of one head's K (or V)."""
    (a, ra), (b, rb) = _split(normal, which), _split(restart, which)
    sl = align_ranges(ra, rb)
    if sl is None:
        return [], np.zeros(0)
    vals = residue_per_position(a[:, :, sl[0]], b[:, :, sl[1]], head)
    return list(range(max(ra[0], rb[0]), min(ra[1], rb[1]))), vals


__all__ = [
    "RESIDUE_COLUMNS",
    "Residue",
    "residue",
    "residue_per_position",
    "residue_positions",
    "residue_table",
    "run_residue_table",
    "align_ranges",
]
