"""Pure computations behind the app's pages (no streamlit, no I/O), tested on hand-built tensors.

Conventions: positions are 0-based logical positions; an eviction event at ``position`` p removes
``[start, end)`` for every generation step ``>= p`` (the token at p is already computed without it).
KV tensors are ``[batch, kv_heads, pos, d_head]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from memento_lens.analyses.palette import CHANCE_COLOR, CONDITION_COLORS, MODE_COLORS, ROLE_COLORS, VARIANT_COLORS  # noqa: F401

ROLES: tuple[str, ...] = ("prompt", "block", "delimiter", "memento", "answer")

# Colours per role / mode / variant / condition come from analyses/palette.py (shared with the figures).

EVICTED_COLOR = "#E8E8E8"

# Attention-mass categories (display order).
MASS_CATEGORIES: tuple[str, ...] = (
    "prompt",
    "mementos",
    "current block",
    "other visible blocks",
    "delimiters",
    "answer",
    "evicted",
    "future",
)


def role_colors() -> dict[str, str]:
    """Colour per role (the analyses palette; every role has one)."""
    return {r: ROLE_COLORS[r] for r in ROLES}


def evicted_at_step(
    n_tokens: int, starts: Sequence[int], ends: Sequence[int], positions: Sequence[int], step: int
) -> np.ndarray:
    """Which positions are evicted from the cache once token ``step`` has been processed.

    Args:
        n_tokens: length of the trace.
        starts, ends, positions: per event, the evicted ``[start, end)`` and the position that fired it.
        step: generation step (= position of the token being processed).

    Returns:
        ``[n_tokens]`` bool, True where a range fired at ``position <= step`` covers the position.
    """
    gone = np.zeros(n_tokens, dtype=bool)
    for s, e, p in zip(starts, ends, positions):
        if p <= step and e > s:
            gone[max(0, int(s)) : min(n_tokens, int(e))] = True
    return gone


def visible_at_step(
    n_tokens: int, starts: Sequence[int], ends: Sequence[int], positions: Sequence[int], step: int
) -> np.ndarray:
    """``[n_tokens]`` bool: positions ``<= step`` that are still in the cache at ``step``."""
    vis = np.arange(n_tokens) <= step
    return vis & ~evicted_at_step(n_tokens, starts, ends, positions, step)


def mass_categories(roles: Sequence[str], blocks: Sequence[int], query_pos: int, visible: np.ndarray) -> np.ndarray:
    """Attention-mass category of each key position for one query.

    ``current block`` is the block content of the block the query sits in (the query's block index
    when it is a block/delimiter/memento token), ``other visible blocks`` block content of any other
    block still in the cache; positions not visible are ``evicted`` (at or before the query) or ``future``
    (after it).

    Returns:
        ``[n_keys]`` object array of :data:`MASS_CATEGORIES` values.
    """
    roles = np.asarray(roles, dtype=object)
    blocks = np.asarray(blocks, dtype=np.int64)
    cur = int(blocks[query_pos]) if 0 <= query_pos < len(blocks) else -1
    cat = np.empty(len(roles), dtype=object)
    cat[roles == "prompt"] = "prompt"
    cat[roles == "memento"] = "mementos"
    cat[roles == "delimiter"] = "delimiters"
    cat[roles == "answer"] = "answer"
    is_block = roles == "block"
    cat[is_block & (blocks == cur) & (cur >= 0)] = "current block"
    cat[is_block & ~((blocks == cur) & (cur >= 0))] = "other visible blocks"
    hidden = ~np.asarray(visible, dtype=bool)
    after = np.arange(len(roles)) > query_pos
    cat[hidden & ~after] = "evicted"
    cat[hidden & after] = "future"
    cat[cat == None] = "delimiters"  # noqa: E711  (unknown roles count as structure)
    return cat


def attention_mass_by_role(
    weights: np.ndarray | torch.Tensor, roles: Sequence[str], blocks: Sequence[int], query_pos: int, visible: np.ndarray
) -> dict[str, float]:
    """Sum of one attention row per category (see :func:`mass_categories`).

    Args:
        weights: ``[n_keys]`` attention of the query over positions (or ``[heads, n_keys]``, averaged
            over heads first). Keys beyond ``len(roles)`` are ignored; missing keys count as 0.
        roles, blocks: per position, from ``tokens.parquet``.
        query_pos: the query's position.
        visible: ``[n_tokens]`` bool from :func:`visible_at_step`.

    Returns:
        ``{category: mass}`` for every :data:`MASS_CATEGORIES` entry (``evicted`` and ``future`` should
        be ~0 for a correctly masked capture; a non-zero value flags a leak).
    """
    w = torch.as_tensor(weights).detach().to(torch.float64).cpu().numpy()
    if w.ndim == 2:
        w = w.mean(axis=0)
    n = len(roles)
    row = np.zeros(n)
    row[: min(n, w.shape[-1])] = w[:n]
    cat = mass_categories(roles, blocks, query_pos, visible)
    return {c: float(row[cat == c].sum()) for c in MASS_CATEGORIES}


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


def with_vanilla_overlay(occ: pd.DataFrame) -> pd.DataFrame:
    """Occupancy rows of one trace plus a ``vanilla`` curve when the run recorded only evicting modes.

    Vanilla attention keeps every token, so after step s it holds ``s + 1`` tokens; bytes use the
    run's own bytes per token (taken from the recorded mode). Recorded vanilla rows are kept as they are.
    """
    if occ.empty or (occ["mode"] == "vanilla").any():
        return occ
    ref = occ[occ["mode"] == occ["mode"].iloc[0]]
    nz = ref[ref["tokens"] > 0]
    per_token = float((nz["bytes"] / nz["tokens"]).median()) if len(nz) else 0.0
    steps = np.sort(ref["step"].unique())
    van = pd.DataFrame(
        {
            "mode": "vanilla",
            "step": steps,
            "tokens": steps + 1,
            "bytes": np.round((steps + 1) * per_token).astype(np.int64),
        }
    )
    for col in occ.columns:
        if col not in van.columns:
            van[col] = occ[col].iloc[0]
    return pd.concat([occ, van[occ.columns]], ignore_index=True)


def nearest_distance(distances) -> int:
    """The distance closest to the probed block (masked +1 before +2 ...; 0 = direct; -1 = control)."""
    return int(min(distances, key=lambda d: (abs(d), d < 0)))


def probe_selection(
    df: pd.DataFrame, x: str, *, distance: int | None = None, layer: int | None = None, checkpoint: str | None = None
) -> pd.DataFrame:
    """Rows of ``probe_results.parquet`` for an accuracy-against-``x`` plot (x = layer | distance | checkpoint).

    All-head probes only (``head == -1``) when present. Per condition, dimensions other than ``x`` are
    fixed: distance = ``distance`` when the condition was probed at it, else the condition's nearest
    distance (direct and causal control have one each); layer = ``layer`` when present, else the
    condition's last layer (masked distances >= 2 are often probed at the last layer only); checkpoint =
    ``checkpoint`` (the caller passes the last one by default).
    """
    d = df
    if "head" in d.columns and (d["head"] == -1).any():
        d = d[d["head"] == -1]
    if x != "checkpoint" and checkpoint is not None and "checkpoint" in d.columns:
        d = d[d["checkpoint"].astype(str) == str(checkpoint)]
    parts = []
    for _, g in d.groupby("condition", sort=False):
        if x != "distance" and "distance" in g.columns:
            have = set(g["distance"].tolist())
            g = g[g["distance"] == (distance if distance in have else nearest_distance(have))]
        if x != "layer" and "layer" in g.columns:
            have = set(g["layer"].tolist())
            g = g[g["layer"] == (layer if layer in have else max(have))]
        parts.append(g)
    return pd.concat(parts, ignore_index=True) if parts else d.iloc[:0]


def step_from_selection(event, n_tokens: int) -> int | None:
    """The generation step a click on a position-axis chart picks: the first selected point's x, rounded
    and clipped to ``[0, n_tokens)``; None when nothing numeric was selected.

    ``event`` is a plotly selection event as streamlit reports it (``{"selection": {"points": [...]}}``).
    """
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        x = p.get("x") if isinstance(p, dict) else None
        if isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x):
            return int(min(max(round(x), 0), n_tokens - 1))
    return None
