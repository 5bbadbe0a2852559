"""Display helpers of the app's pages (no streamlit, no I/O): colours, which probe rows a plot shows, what a
click on a chart selects.

The science the pages show lives in ``analyses/`` as pure functions a notebook can call without streamlit:
the residue (:mod:`memento_lens.analyses.residue`), what a query sees and its attention mass by role
(:mod:`memento_lens.analyses.attention`), the vanilla occupancy curve
(:func:`memento_lens.analyses.kv.with_vanilla_overlay`). The app only caches and draws them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from memento_lens.analyses.palette import CHANCE_COLOR, CONDITION_COLORS, MODE_COLORS, ROLE_COLORS, VARIANT_COLORS  # noqa: F401

ROLES: tuple[str, ...] = ("prompt", "block", "delimiter", "memento", "answer")

# Colours per role / mode / variant / condition come from analyses/palette.py (shared with the figures).

EVICTED_COLOR = "#E8E8E8"


def role_colors() -> dict[str, str]:
    """Colour per role (the analyses palette; every role has one)."""
    return {r: ROLE_COLORS[r] for r in ROLES}


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
