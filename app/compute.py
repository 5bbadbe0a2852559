"""Display helpers of the app's pages (no streamlit, no I/O): colours, which probe rows a plot shows, what a
click on a chart selects.

The science the pages show lives in ``analyses/`` as pure functions a notebook can call without streamlit:
the residue (:mod:`memento_lens.analyses.residue`), what a query sees and its attention mass by role
(:mod:`memento_lens.analyses.attention`), the vanilla occupancy curve
(:func:`memento_lens.analyses.kv.with_vanilla_overlay`). The app only caches and draws them.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from memento_lens.analyses.figures.base import all_head_rows
from memento_lens.analyses.palette import (  # noqa: F401
    CHANCE_COLOR,
    CONDITION_COLORS,
    EVICTED_COLOR,
    EVICTED_TINT,
    MASS_COLORS,
    MODE_COLORS,
    NOT_VISIBLE_COLOR,
    ROLE_COLORS,
    VARIANT_COLORS,
)

ROLES: tuple[str, ...] = ("prompt", "block", "delimiter", "memento", "answer")

# Colours per role / mode / variant / condition come from analyses/palette.py (shared with the figures).


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
    d = all_head_rows(df)
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


def query_from_selection(event, n_tokens: int) -> int | None:
    """The query position a click on a query x key heatmap's row handle picks: the first selected point's y,
    rounded and clipped to ``[0, n_tokens)``; None when nothing numeric was selected."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        y = p.get("y") if isinstance(p, dict) else None
        if isinstance(y, (int, float)) and not isinstance(y, bool) and np.isfinite(y):
            return int(min(max(round(y), 0), n_tokens - 1))
    return None


# -- token text -----------------------------------------------------------------------------------
def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2, Qwen, SmolLM2: ``Ġ`` = space, ``Ċ`` = newline)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _byte_alphabet()
_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def decode_token(token: str) -> str:
    """The text a tokenizer's token string stands for: byte-level BPE markers (``ĠtheĠproblem`` -> `` the
    problem``, ``Ċ`` -> newline) and SentencePiece's ``▁`` / ``<0x0A>`` decoded; anything else unchanged.

    A byte-level token is recognised by being made only of that alphabet's characters and holding at least one
    of its stand-ins for a non-printable byte, or stand-ins that form valid UTF-8 (a plain `` the`` holds a real
    space, so it is left alone); a token that is part of a multi-byte character shows the replacement character.
    """
    s = str(token)
    m = _SP_BYTE.match(s)
    if m:
        return bytes([int(m.group(1), 16)]).decode("latin-1")
    if "▁" in s:
        return s.replace("▁", " ")
    if s and all(c in _BYTES for c in s):
        raw = bytes(_BYTES[c] for c in s)
        if any(ord(c) >= 256 for c in s):
            return raw.decode("utf-8", errors="replace")
        if any(ord(c) >= 128 for c in s):  # Latin-1 stand-ins only: text if they form valid UTF-8 (``Ã©`` -> é)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return s
    return s


def token_label(text: str, width: int | None = None) -> str:
    """Token text with its whitespace made visible (for chart labels): space ``·``, newline ``⏎``, tab ``⇥``;
    cut to ``width`` characters with ``…``."""
    out = text.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "")
    if width is not None and len(out) > width:
        out = out[: max(1, width - 1)] + "…"
    return out
