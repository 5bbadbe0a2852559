"""One colour per role, mode, condition, variant and domain, shared by the figures and the app.

Colours are an Okabe–Ito-derived, colour-blind-safe set; the same key always gets the same colour in
every figure. Import the dictionaries, or call :func:`color` for a fallback-safe lookup.
"""

from __future__ import annotations

from typing import Mapping

# Token roles (runtime.trace.Role values).
ROLE_COLORS: dict[str, str] = {
    "prompt": "#999999",
    "block": "#0072B2",
    "delimiter": "#000000",
    "memento": "#E69F00",
    "answer": "#009E73",
}

# Evicted positions: their own colour (never the prompt's grey), wherever attention or tokens are drawn;
# EVICTED_TINT is the same hue for backgrounds (evicted token text, shaded ranges in heatmaps).
EVICTED_COLOR = "#882255"
EVICTED_TINT = "#E7C6D5"
# Positions a query cannot see yet (future) and cells with nothing visible.
NOT_VISIBLE_COLOR = "#F2F2F2"

# Attention-mass categories (analyses.attention.MASS_CATEGORIES), coloured by the role they sum.
MASS_COLORS: dict[str, str] = {
    "prompt": ROLE_COLORS["prompt"],
    "mementos": ROLE_COLORS["memento"],
    "current block": ROLE_COLORS["block"],
    "other visible blocks": "#56B4E9",
    "delimiters": ROLE_COLORS["delimiter"],
    "answer": ROLE_COLORS["answer"],
    "evicted": EVICTED_COLOR,
    "future": "#CCCCCC",
}

# Cache modes (BlockMaskingConfig.mode; occupancy.parquet ``mode``).
MODE_COLORS: dict[str, str] = {
    "vanilla": "#7F7F7F",
    "memento": "#D55E00",
    "restart": "#CC79A7",
}

# Probe conditions (probe_results.parquet ``condition``).
CONDITION_COLORS: dict[str, str] = {
    "direct": "#0072B2",
    "masked": "#D55E00",
    "causal_control": "#7F7F7F",
}

# Memento KV variants (kv/index.parquet and ablations.parquet ``variant``).
VARIANT_COLORS: dict[str, str] = {
    "normal": "#0072B2",
    "restart": "#CC79A7",
    "evicted_block": "#56B4E9",
}

# OpenMementos domains.
DOMAIN_COLORS: dict[str, str] = {
    "math": "#0072B2",
    "code": "#009E73",
    "science": "#E69F00",
    "all": "#000000",
}

# Task accuracy next to probe accuracy (toy-leakage) and chance lines.
TASK_COLOR = "#009E73"
CHANCE_COLOR = "#BBBBBB"

# Series without a fixed meaning (sources, models): distinct, readable on white (no yellows).
SERIES_COLORS: tuple[str, ...] = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#882255",
    "#332288",
    "#117733",
    "#AA4499",
    "#44AA99",
)
_FALLBACK = SERIES_COLORS

PALETTES: dict[str, Mapping[str, str]] = {
    "role": ROLE_COLORS,
    "mode": MODE_COLORS,
    "condition": CONDITION_COLORS,
    "variant": VARIANT_COLORS,
    "domain": DOMAIN_COLORS,
    "mass": MASS_COLORS,
}


def color(kind: str, key: str) -> str:
    """The colour of ``key`` in palette ``kind`` (role, mode, condition, variant, domain).

    Unknown keys get a stable fallback colour derived from the key's characters (not ``hash()``, which
    changes between processes), so a new domain or condition keeps its colour across runs.
    """
    palette = PALETTES.get(kind, {})
    if key in palette:
        return palette[key]
    return _FALLBACK[sum(map(ord, str(key))) % len(_FALLBACK)]


def series_color(index: int) -> str:
    """The ``index``-th colour for series without a palette of their own (e.g. one line per source)."""
    return SERIES_COLORS[index % len(SERIES_COLORS)]
