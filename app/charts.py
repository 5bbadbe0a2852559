"""Plotly figures and HTML snippets for the app's pages (no streamlit, no I/O): data in, figure out.

Colours come from :func:`memento_lens.app.compute.role_colors` so every page uses one colour per role.
"""

from __future__ import annotations

import html
from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from memento_lens.analyses.attention import MASS_CATEGORIES, EvictedSpan, Pattern
from memento_lens.analyses.palette import color as palette_color
from plotly.subplots import make_subplots

from .compute import (
    CHANCE_COLOR,
    CONDITION_COLORS,
    EVICTED_COLOR,
    EVICTED_TINT,
    MASS_COLORS,
    MODE_COLORS,
    NOT_VISIBLE_COLOR,
    ROLES,
    VARIANT_COLORS,
    decode_token,
    role_colors,
    token_label,
)

_LAYOUT = dict(
    template="plotly_white",
    margin=dict(l=55, r=20, t=85, b=45),
    height=380,
    title_y=0.96,
    title_yanchor="top",
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
)


def _texts(tokens: pd.DataFrame) -> np.ndarray:
    """Decoded token text (``text``, added by :meth:`RunData.tokens`), else the raw token strings decoded."""
    if "text" in tokens.columns:
        return tokens["text"].astype(str).to_numpy()
    return np.array([decode_token(t) for t in tokens["token"].astype(str)], dtype=object)


def _roles_in(roles) -> list[str]:
    """The known roles in display order, then any other role value found (drawn in a fallback colour)."""
    extra = sorted({str(r) for r in pd.unique(pd.Series(roles).astype(str))} - set(ROLES))
    return [*ROLES, *extra]


def occupancy_figure(
    occ: pd.DataFrame, step: int | None = None, events: pd.DataFrame | None = None, unit: str = "tokens"
) -> go.Figure:
    """KV-cache occupancy per generation step, one line per mode (vanilla vs memento overlay)."""
    fig = go.Figure()
    for mode, g in occ.groupby("mode", sort=False):
        y = g[unit].to_numpy()
        if unit == "bytes":
            y = y / 2**20
        fig.add_trace(
            go.Scatter(
                x=g["step"].to_numpy(),
                y=y,
                mode="lines",
                name=str(mode),
                line=dict(
                    color=MODE_COLORS.get(str(mode), "#333333"), width=2, dash="dot" if mode == "vanilla" else "solid"
                ),
            )
        )
    if events is not None and len(events):
        ev = events[events["end"] > events["start"]]
        if len(ev):
            mem = occ[occ["mode"] != "vanilla"]
            yv = mem.set_index("step")[unit].reindex(ev["position"]).to_numpy() if len(mem) else None
            fig.add_trace(
                go.Scatter(
                    x=ev["position"].to_numpy(),
                    y=(yv / 2**20 if unit == "bytes" else yv) if yv is not None else None,
                    mode="markers",
                    name="eviction",
                    marker=dict(symbol="x", size=8, color="#D55E00"),
                    text=[
                        f"{k}: block {b}, evicted [{s}, {e})"
                        for k, b, s, e in zip(ev["kind"], ev["block"], ev["start"], ev["end"])
                    ],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    if step is not None:
        fig.add_vline(
            x=step,
            line=dict(color="#000000", width=1, dash="dash"),
            annotation_text=f"step {step}",
            annotation_position="top right",
        )
    fig.update_layout(
        title="KV cache occupancy (sawtooth)",
        xaxis_title="generation step (position)",
        yaxis_title="MiB in cache" if unit == "bytes" else "tokens in cache",
        **_LAYOUT,
    )
    return fig


def token_strip_figure(tokens: pd.DataFrame, gone: np.ndarray, step: int) -> go.Figure:
    """Every position as a coloured cell by role; evicted at ``step`` greyed, future faded."""
    all_roles = _roles_in(tokens["role"])
    colors = {r: palette_color("role", r) for r in all_roles}
    pos = tokens["pos"].to_numpy()
    fig = go.Figure()
    for role in all_roles:
        sel = (tokens["role"].to_numpy() == role) & ~gone
        if not sel.any():
            continue
        fig.add_trace(
            go.Bar(
                x=pos[sel],
                y=np.ones(sel.sum()),
                name=role,
                marker_color=colors[role],
                marker_opacity=[1.0 if p <= step else 0.25 for p in pos[sel]],
                text=[token_label(t, 40) for t in _texts(tokens)[sel]],
                textposition="none",
                hovertemplate="%{x}: %{text}<extra>" + role + "</extra>",
            )
        )
    if gone.any():
        fig.add_trace(
            go.Bar(
                x=pos[gone],
                y=np.ones(gone.sum()),
                name="evicted",
                marker_color=EVICTED_TINT,
                marker_pattern=dict(shape="/", fgcolor=EVICTED_COLOR),
                text=[token_label(t, 40) for t in _texts(tokens)[gone]],
                textposition="none",
                hovertemplate="%{x}: %{text}<extra>evicted</extra>",
            )
        )
    fig.add_vline(x=step, line=dict(color="#000000", width=1, dash="dash"))
    fig.update_layout(
        title=f"Tokens by role at step {step}",
        barmode="overlay",
        bargap=0,
        height=170,
        yaxis=dict(visible=False),
        xaxis_title="position",
        template="plotly_white",
        margin=dict(l=20, r=20, t=40, b=35),
        showlegend=True,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
    )
    return fig


def _span(tok: str, role: str, state: str, colors: Mapping[str, str], pos: int) -> str:
    text = html.escape(tok).replace("\n", "⏎\n")
    if state == "gone":
        style = f"background:{EVICTED_TINT};color:{EVICTED_COLOR};text-decoration:line-through"
    else:
        style = f"background:{colors.get(role, '#ccc')}33;border-bottom:2px solid {colors.get(role, '#ccc')}"
        if state == "future":
            style += ";opacity:0.35"
    # a white hairline on the right of every token keeps token boundaries visible in running text
    return (
        f'<span title="{pos} {role}" style="{style};padding:0 1px;white-space:pre-wrap;'
        f'box-shadow:inset -1px 0 #FFFFFF">{text}</span>'
    )


def tokens_inline_html(texts, roles, positions) -> str:
    """Decoded tokens as running text, each token a role-coloured span (boundaries visible)."""
    colors = role_colors()
    body = "".join(_span(str(t), str(r), "now", colors, int(p)) for t, r, p in zip(texts, roles, positions))
    return f"<div style='font-family:monospace;font-size:13px;line-height:1.7'>{body}</div>"


def token_stream_html(tokens: pd.DataFrame, gone: np.ndarray, step: int, max_tokens: int = 4000) -> str:
    """The trace as coloured text, each memento beside its block; evicted tokens struck through in grey,
    tokens after ``step`` faded. Long traces show ``max_tokens`` tokens around the step."""
    colors = role_colors()
    n = len(tokens)
    lo = 0 if n <= max_tokens else int(np.clip(step - max_tokens // 2, 0, n - max_tokens))
    hi = min(n, lo + max_tokens)
    roles = tokens["role"].to_numpy()
    blocks = tokens["block"].to_numpy()
    toks = _texts(tokens)
    pos = tokens["pos"].to_numpy()

    def spans(idx: np.ndarray) -> str:
        return "".join(
            _span(toks[i], roles[i], "gone" if gone[i] else ("future" if pos[i] > step else "now"), colors, int(pos[i]))
            for i in idx
        )

    window = np.arange(lo, hi)
    in_block = (blocks[window] >= 0) & (roles[window] != "prompt") & (roles[window] != "answer")
    parts = []
    if lo > 0:
        parts.append(f"<p style='color:#888'>… {lo} earlier tokens not shown …</p>")
    head = window[~in_block & (window < (window[in_block][0] if in_block.any() else hi))]
    if len(head):
        parts.append(f"<div style='margin:4px 0'><b>prompt</b><br>{spans(head)}</div>")
    if in_block.any():
        rows = []
        for b in pd.unique(blocks[window][in_block]):
            idx = window[(blocks[window] == b) & in_block]
            is_mem = np.isin(roles[idx], ["memento"])
            first_mem = np.argmax(is_mem) if is_mem.any() else len(idx)
            # block part: everything before the memento's <|summary_start|>
            split = first_mem - 1 if first_mem > 0 and is_mem.any() else len(idx)
            rows.append(
                f"<tr><td style='vertical-align:top;color:#666'>{int(b)}</td>"
                f"<td style='vertical-align:top'>{spans(idx[:split])}</td>"
                f"<td style='vertical-align:top'>{spans(idx[split:])}</td></tr>"
            )
        parts.append(
            "<table style='width:100%;border-collapse:collapse;font-family:monospace;font-size:13px'>"
            "<tr><th style='text-align:left'>#</th><th style='text-align:left'>block</th>"
            "<th style='text-align:left'>memento</th></tr>" + "".join(rows) + "</table>"
        )
    tail = window[~in_block & (window > (window[in_block][-1] if in_block.any() else hi))]
    if len(tail):
        parts.append(f"<div style='margin:4px 0'><b>answer</b><br>{spans(tail)}</div>")
    if hi < n:
        parts.append(f"<p style='color:#888'>… {n - hi} later tokens not shown …</p>")
    legend = " ".join(_span(r, r, "now", colors, -1) for r in ROLES) + " " + _span("evicted", "", "gone", colors, -1)
    return f"<div style='font-family:monospace;font-size:13px;line-height:1.7'>{legend}{''.join(parts)}</div>"


def attention_figure(
    rows: Mapping[str, np.ndarray | None], roles: np.ndarray, visible: np.ndarray, query_pos: int, head_label: str
) -> go.Figure:
    """Attention of one query over positions, one panel per variant (normal | restart) side by side.

    ``rows[variant]`` is ``[n_keys]`` (or None when not captured). Evicted positions are shown as grey
    markers at 0.
    """
    variants = list(rows)
    colors = {r: palette_color("role", r) for r in _roles_in(roles)}
    fig = make_subplots(
        rows=1,
        cols=len(variants),
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=[f"{v}" + ("" if rows[v] is not None else " (not captured)") for v in variants],
    )
    n = len(roles)
    pos = np.arange(n)
    upto = pos <= query_pos
    shown_roles: set[str] = set()
    for c, v in enumerate(variants, start=1):
        w = rows[v]
        if w is None:
            continue
        row = np.zeros(n)
        row[: min(n, len(w))] = w[:n]
        for role in _roles_in(roles):
            sel = (roles == role) & visible & upto
            if not sel.any():
                continue
            fig.add_trace(
                go.Bar(
                    x=pos[sel],
                    y=row[sel],
                    name=role,
                    marker_color=colors[role],
                    legendgroup=role,
                    showlegend=role not in shown_roles,
                    hovertemplate="pos %{x}: %{y:.3f}<extra>" + role + "</extra>",
                ),
                row=1,
                col=c,
            )
            shown_roles.add(role)
        ev = ~visible & upto
        if ev.any():
            fig.add_trace(
                go.Scatter(
                    x=pos[ev],
                    y=np.zeros(ev.sum()),
                    mode="markers",
                    name="evicted",
                    marker=dict(color=EVICTED_COLOR, symbol="line-ns-open", size=8),
                    legendgroup="evicted",
                    showlegend="evicted" not in shown_roles,
                    hovertemplate="pos %{x}: evicted<extra></extra>",
                ),
                row=1,
                col=c,
            )
            shown_roles.add("evicted")
        fig.add_vline(x=query_pos, line=dict(color="#000", width=1, dash="dash"), row=1, col=c)
    fig.update_layout(
        title=f"Attention of query {query_pos} ({head_label}) over visible positions",
        barmode="overlay",
        bargap=0,
        **{
            **_LAYOUT,
            "margin": dict(l=55, r=20, t=85, b=95),
            "legend": dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
        },
    )
    fig.update_xaxes(title_text="key position")
    fig.update_yaxes(title_text="attention weight", row=1, col=1)
    return fig


def mass_figure(masses: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Attention mass by role category: one bar per category in that role's colour (the palette used
    everywhere), grouped per variant (restart hatched)."""
    fig = go.Figure()
    cats = [
        c for c in MASS_CATEGORIES if c not in ("evicted", "future") or any(m.get(c, 0) > 0 for m in masses.values())
    ]
    for i, (v, m) in enumerate(masses.items()):
        fig.add_trace(
            go.Bar(
                x=cats,
                y=[m.get(c, 0.0) for c in cats],
                name=v,
                marker=dict(
                    color=[MASS_COLORS.get(c, "#333") for c in cats],
                    pattern=dict(shape="" if i == 0 else "/", fgcolor="#FFFFFF", solidity=0.4),
                    line=dict(color=VARIANT_COLORS.get(v, "#333"), width=2),
                ),
                hovertemplate="%{x}: %{y:.3f}<extra>" + v + "</extra>",
            )
        )
    fig.update_layout(
        title="Attention mass by role"
        + (" (" + " | ".join(masses) + ", outlined by variant)" if len(masses) > 1 else ""),
        barmode="group",
        yaxis_title="mass",
        **_LAYOUT,
    )
    return fig


def residue_heatmap(table: pd.DataFrame, metric: str) -> go.Figure:
    """Heatmap of ``metric`` with one row per memento (block) and one column per (layer, head).

    ``table`` has columns block, layer, head and ``metric``.
    """
    pivot = table.pivot_table(index="block", columns=["layer", "head"], values=metric, aggfunc="mean")
    cols = [f"L{l}·H{h}" for l, h in pivot.columns]
    label = {"rel_l2": "relative L2 ‖normal−restart‖/‖normal‖", "cosine": "cosine(normal, restart)"}[metric]
    fig = go.Figure(
        go.Heatmap(
            z=pivot.to_numpy(),
            x=cols,
            y=[f"memento {int(b)}" for b in pivot.index],
            colorscale="Viridis" if metric == "rel_l2" else "RdBu",
            colorbar=dict(title=metric),
            hovertemplate="%{y}, %{x}: %{z:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Erased-block residue: {label}",
        xaxis_title="layer · head",
        yaxis=dict(autorange="reversed"),
        **{**_LAYOUT, "height": max(300, 60 + 28 * len(pivot))},
    )
    return fig


def residue_positions_figure(labels: list[str], values: np.ndarray, title: str) -> go.Figure:
    """Bar per memento token (``labels`` like ``"23: sum"``) of its relative L2 residue."""
    fig = go.Figure(go.Bar(x=labels, y=values, marker_color=role_colors()["memento"]))
    fig.update_layout(title=title, yaxis_title="relative L2", **_LAYOUT)
    return fig


def _band(fig: go.Figure, x, lo, hi, color: str, name: str, row=None, col=None) -> None:
    kw = {} if row is None else dict(row=row, col=col)
    fig.add_trace(
        go.Scatter(
            x=list(x) + list(x)[::-1],
            y=list(hi) + list(lo)[::-1],
            fill="toself",
            fillcolor=color,
            opacity=0.18,
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
            legendgroup=name,
        ),
        **kw,
    )


_SERIES = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _series_color(name: str, palette: Mapping[str, str] | None, i: int) -> str:
    if palette and name in palette:
        return palette[name]
    return _SERIES[i % len(_SERIES)]


def probe_figure(
    df: pd.DataFrame, x: str, chance: float | None, palette: Mapping[str, str] | None = CONDITION_COLORS
) -> go.Figure:
    """Probe accuracy against ``x`` (layer, distance or checkpoint), one line per condition, 95% CI band,
    chance line. Rows with the same (condition, x) are averaged (e.g. over seeds)."""
    numeric = pd.api.types.is_numeric_dtype(df[x])
    g = df.groupby(["condition", x], sort=numeric)[["accuracy", "ci_low", "ci_high"]].mean().reset_index()
    fig = go.Figure()
    for i, (cond, sub) in enumerate(g.groupby("condition", sort=False)):
        color = _series_color(str(cond), palette, i)
        _band(fig, sub[x], sub["ci_low"], sub["ci_high"], color, str(cond))
        fig.add_trace(
            go.Scatter(
                x=sub[x].tolist(),
                y=sub["accuracy"].tolist(),
                mode="lines+markers",
                name=str(cond),
                legendgroup=str(cond),
                line=dict(color=color),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=(sub["ci_high"] - sub["accuracy"]).tolist(),
                    arrayminus=(sub["accuracy"] - sub["ci_low"]).tolist(),
                    thickness=1,
                ),
            )
        )
    if chance is not None:
        fig.add_hline(
            y=chance,
            line=dict(color=CHANCE_COLOR, dash="dot", width=2),
            annotation_text=f"chance {chance:.2f}",
            annotation_position="bottom right",
        )
    fig.update_layout(
        title=f"Probe accuracy by {x} (95% CI)", xaxis_title=x, yaxis_title="accuracy", yaxis_range=[0, 1.02], **_LAYOUT
    )
    if x != "checkpoint":
        fig.update_xaxes(dtick=1)
    return fig


def ablation_figure(df: pd.DataFrame, metric: str) -> go.Figure:
    """Ablation / patching curves: ``metric`` value by layer, one line per (experiment, variant, direction);
    ``layer = -1`` (all layers) is drawn as a horizontal reference line."""
    d = df[df["metric"] == metric]
    fig = go.Figure()
    label_cols = [c for c in ("experiment", "variant", "direction") if c in d.columns]
    if len(d) and not (d["layer"] >= 0).any():  # a whole-model metric: one bar per variant, with its CI
        g = d.groupby(label_cols, sort=False)[["value", "ci_low", "ci_high"]].mean().reset_index()
        names = [" / ".join(str(r[c]) for c in label_cols if str(r[c]) not in ("", "none")) for _, r in g.iterrows()]
        colors = [palette_color("variant", str(v)) for v in g["variant"]] if "variant" in g else None
        fig.add_trace(
            go.Bar(
                x=names,
                y=g["value"].tolist(),
                marker_color=colors,
                name=metric,
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=(g["ci_high"] - g["value"]).tolist(),
                    arrayminus=(g["value"] - g["ci_low"]).tolist(),
                ),
            )
        )
        fig.update_layout(title=f"Restart ablation and patching: {metric} (all layers)", yaxis_title=metric, **_LAYOUT)
        return fig
    for i, (key, sub) in enumerate(d.groupby(label_cols, sort=False)):
        parts = dict(zip(label_cols, key if isinstance(key, tuple) else (key,)))
        name = " / ".join(str(k) for k in parts.values() if str(k) not in ("", "none"))
        color = (
            palette_color("variant", str(parts.get("variant", ""))) if "variant" in parts else _SERIES[i % len(_SERIES)]
        )
        per = sub[sub["layer"] >= 0].groupby("layer")[["value", "ci_low", "ci_high"]].mean().reset_index()
        if len(per):
            _band(fig, per["layer"], per["ci_low"], per["ci_high"], color, name)
            fig.add_trace(
                go.Scatter(
                    x=per["layer"].tolist(),
                    y=per["value"].tolist(),
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    line=dict(color=color),
                )
            )
        all_l = sub[sub["layer"] < 0]
        if len(all_l):
            layers = d.loc[d["layer"] >= 0, "layer"]
            xs = [layers.min(), layers.max()] if len(layers) else [0, 1]
            v = float(all_l["value"].mean())
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[v, v],
                    mode="lines",
                    name=f"{name} (all layers)",
                    legendgroup=name,
                    line=dict(color=color, dash="dash", width=1.5),
                )
            )
    fig.update_layout(
        title=f"Restart ablation and patching: {metric}", xaxis_title="layer", yaxis_title=metric, **_LAYOUT
    )
    fig.update_xaxes(dtick=1)
    return fig


def run_sizes_figure(sizes: pd.DataFrame) -> go.Figure:
    """Stacked bars: MB per file category (kv, attention, tables, figures, other) for each run.

    ``sizes`` has columns run, category, mb.
    """
    fig = go.Figure()
    for i, (cat, g) in enumerate(sizes.groupby("category", sort=False)):
        fig.add_trace(
            go.Bar(x=g["run"].tolist(), y=g["mb"].tolist(), name=str(cat), marker_color=_SERIES[i % len(_SERIES)])
        )
    fig.update_layout(title="Run sizes on disk", barmode="stack", yaxis_title="MB", **_LAYOUT)
    return fig


# -- query x key attention --------------------------------------------------------------------------------
# 0 attention is a pale colour of the scale; positions a query cannot see are left blank (NOT_VISIBLE_COLOR),
# evicted ranges shaded in the evicted colour beneath them, so "not visible" never reads as "zero".
ATTENTION_SCALE = [[0.0, "#FFF7BC"], [0.25, "#FEC44F"], [0.5, "#41B6C4"], [0.75, "#225EA8"], [1.0, "#081D58"]]
DIFF_SCALE = "RdBu_r"
MAX_TICKS = 64


def _axis_labels(
    edges_: np.ndarray, texts, roles, single: bool | None = None, width: int = 14
) -> tuple[list[str], list[str]]:
    """Role-coloured tick texts and plain hover labels per cell of position edges: a token when the cell is
    one position (or ``single``: each cell starts at the one position it stands for), else the range."""
    starts, ends = edges_[:-1], edges_[1:]
    single = bool((ends - starts == 1).all()) if single is None else single
    colors = {r: palette_color("role", r) for r in _roles_in(roles)} if len(roles) else {}
    hover, ticks = [], []
    for a, b in zip(starts, ends):
        if single and a < len(texts):
            lab = token_label(str(texts[a]), width)
            hover.append(f"{a} {lab} ({roles[a]})")
            ticks.append(f"<span style='color:{colors.get(str(roles[a]), '#333')}'>{a} {html.escape(lab)}</span>")
        else:
            hover.append(f"{a}–{b - 1}")
            ticks.append(f"{a}–{b - 1}")
    return ticks, hover


def _every(n: int, most: int = MAX_TICKS) -> list[int]:
    step = max(1, int(np.ceil(n / most)))
    return list(range(0, n, step))


def qk_heatmap(
    pattern: Pattern,
    z: np.ndarray,
    texts,
    roles,
    spans: list[EvictedSpan] = (),
    title: str = "",
    diverging: bool = False,
    sqrt: bool = False,
    query: int | None = None,
    height: int | None = None,
    row_handles=(),
    rows_are_queries: bool = False,
) -> go.Figure:
    """One query x key heatmap of ``z`` (``[rows, cols]`` on ``pattern``'s edges; NaN = not visible).

    Rows are queries (top to bottom), columns keys; tick labels are decoded tokens coloured by role (bins when
    the window is wide). Evicted ranges (``spans``) are shaded in the evicted colour from the step they stop
    being visible; cells no key of which is visible are blank. ``diverging`` draws a difference around 0.
    """
    qe, ke = pattern.q_edges, pattern.k_edges
    nr = len(qe) - 1
    qt, qh = _axis_labels(qe, texts, roles, single=True if rows_are_queries else None)
    kt, kh = _axis_labels(ke, texts, roles)
    qv, kv = _every(nr), _every(len(ke) - 1, MAX_TICKS // 2)

    def row_of(pos: int) -> float:  # rows are drawn one unit each (row i = cell [qe[i], qe[i+1]))
        return float(np.searchsorted(qe, pos, side="right") - 1)

    shown = np.sign(z) * np.sqrt(np.abs(z)) if sqrt else z
    finite = z[np.isfinite(z)]
    if diverging:
        lim = float(np.nanpercentile(np.abs(finite), 99)) if finite.size else 1.0
        color = dict(colorscale=DIFF_SCALE, zmid=0.0, zmin=-(lim or 1.0), zmax=lim or 1.0)
        if sqrt:
            color.update(zmin=-np.sqrt(lim or 1.0), zmax=np.sqrt(lim or 1.0))
    else:
        # the scale tops at the 99.5th percentile, so one attention sink (often position 0) does not wash out
        # the rest; cells above it show the darkest colour and their value on hover
        top = float(np.nanpercentile(shown, 99.5)) if finite.size else 1.0
        color = dict(colorscale=ATTENTION_SCALE, zmin=0.0, zmax=top if top > 0 else 1.0)
    head = np.char.add(np.char.add("query ", np.asarray(qh, dtype=str))[:, None], "<br>key ")
    head = np.char.add(head, np.asarray(kh, dtype=str)[None, :])
    vals = np.where(np.isfinite(z), np.char.mod("%.4f", np.nan_to_num(z)), "not visible")
    hover = np.char.add(np.char.add(head, "<br>"), vals)
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            x=ke - 0.5,
            y=np.arange(nr + 1) - 0.5,
            text=hover,
            hovertemplate="%{text}<extra></extra>",
            hoverongaps=False,
            colorbar=dict(title="Δ weight" if diverging else ("√ weight" if sqrt else "weight"), len=0.6),
            **color,
        )
    )
    shapes = []  # one layout update (fig.add_shape per span costs ~20 ms each)
    for sp in spans:
        first = np.searchsorted(qe[:-1], sp.from_step, side="left") if rows_are_queries else row_of(sp.from_step)
        if first >= nr:
            continue
        shapes.append(
            dict(
                type="rect",
                x0=sp.start - 0.5,
                x1=sp.end - 0.5,
                y0=float(first) - 0.5,
                y1=nr - 0.5,
                fillcolor=EVICTED_TINT,
                line=dict(color=EVICTED_COLOR, width=1),
                layer="below",
            )
        )
    # legend entries for what the colours mean (invisible points)
    for name, c in (("evicted (not visible)", EVICTED_TINT), ("not visible yet / nothing visible", NOT_VISIBLE_COLOR)):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                marker=dict(
                    symbol="square",
                    size=12,
                    color=c,
                    line=dict(color=EVICTED_COLOR if "evicted" in name else "#BBBBBB", width=1),
                ),
            )
        )
    handles = sorted({int(q) for q in row_handles if qe[0] <= q < qe[-1]})
    if not rows_are_queries:  # bins: one handle per row, its first captured query
        first = np.searchsorted(qe, handles, side="right") - 1
        handles = [h for h, keep in zip(handles, np.r_[True, np.diff(first) > 0]) if keep]
    x_lo = float(ke[0]) - 0.5
    if handles:  # one clickable square per captured query, left of the keys (heatmaps are not selectable)
        x_lo = float(ke[0]) - 0.5 - max(1.0, (float(ke[-1]) - float(ke[0])) / 40)
        colors = {r: palette_color("role", r) for r in _roles_in(roles)}
        fig.add_trace(
            go.Scatter(
                x=[x_lo + (float(ke[0]) - 0.5 - x_lo) / 2] * len(handles),
                y=[row_of(q) for q in handles],
                mode="markers",
                name="query rows (click to open)",
                marker=dict(symbol="square", size=7, color=[colors.get(str(roles[q]), "#333") for q in handles]),
                text=[f"open query {q} {token_label(str(texts[q]), 20)}" for q in handles],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    if query is not None and qe[0] <= query < qe[-1]:
        y = row_of(query)
        shapes.append(
            dict(type="line", xref="x domain", x0=0, x1=1, y0=y, y1=y, line=dict(color="#000000", width=1, dash="dot"))
        )
    rows = nr
    fig.update_layout(
        shapes=shapes,
        title=title,
        template="plotly_white",
        plot_bgcolor=NOT_VISIBLE_COLOR,
        height=height or int(np.clip(160 + 11 * rows, 420, 1100)),
        margin=dict(l=150, r=20, t=120, b=150),
        title_y=0.99,
        title_yanchor="top",
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0, font=dict(size=11)),
        xaxis=dict(
            title="key position",
            tickvals=[float(ke[i]) for i in kv],
            ticktext=[kt[i] for i in kv],
            tickangle=-60,
            tickfont=dict(size=9),
            showgrid=False,
            range=[x_lo, float(ke[-1]) - 0.5],
        ),
        yaxis=dict(
            title="query position",
            tickvals=[float(i) for i in qv],
            ticktext=[qt[i] for i in qv],
            tickfont=dict(size=9),
            showgrid=False,
            range=[nr - 0.5, -0.5],
        ),
    )
    return fig


def head_grid_figure(
    patterns: Mapping[int, Pattern], ranked: pd.DataFrame, metric: str, ncols: int = 6, limit: int = 36
) -> go.Figure:
    """Small query x key patterns, one tile per (layer, head), in the order of ``ranked`` (rows with ``layer``,
    ``head`` and ``metric``), at most ``limit`` of them; one colour scale for all.

    The tiles are one heatmap (tiles separated by blank cells, each titled by an annotation): one trace keeps a
    grid of dozens of heads as cheap to draw as one pattern.
    """
    cells = ranked.head(limit).reset_index(drop=True)
    n = len(cells)
    nrows = max(1, int(np.ceil(n / ncols)))
    zs = [patterns[int(l_)].weights[int(h)] for l_, h in zip(cells["layer"], cells["head"])]
    r, c = zs[0].shape if zs else (1, 1)
    gap, top_gap = max(1, c // 12), max(2, r // 5)
    tile_w, tile_h = c + gap, r + top_gap
    big = np.full((nrows * tile_h, ncols * tile_w), np.nan, dtype=np.float32)
    label = np.full(big.shape, "", dtype=object)
    annotations, shapes = [], []
    for i, (z, l_, h, v) in enumerate(zip(zs, cells["layer"], cells["head"], cells[metric])):
        y0, x0 = (i // ncols) * tile_h + top_gap, (i % ncols) * tile_w
        big[y0 : y0 + r, x0 : x0 + c] = z
        shapes.append(  # the tile's not-visible cells in the not-visible colour, the gaps white
            dict(
                type="rect",
                x0=x0 - 0.5,
                x1=x0 + c - 0.5,
                y0=y0 - 0.5,
                y1=y0 + r - 0.5,
                fillcolor=NOT_VISIBLE_COLOR,
                line=dict(width=0),
                layer="below",
            )
        )
        label[y0 : y0 + r, x0 : x0 + c] = f"L{int(l_)}·H{int(h)}"
        annotations.append(
            dict(
                x=x0 + c / 2 - 0.5,
                y=y0 - 0.6,
                text=f"L{int(l_)}·H{int(h)} {metric} {v:.2f}",
                showarrow=False,
                yanchor="bottom",
                font=dict(size=10),
            )
        )
    finite = big[np.isfinite(big)]
    top = float(np.percentile(finite, 99)) if finite.size else 1.0
    vals = np.where(np.isfinite(big), np.char.mod("%.3f", np.nan_to_num(big)), "not visible")
    hover = np.char.add(np.char.add(label.astype(str), ": "), vals)
    fig = go.Figure(
        go.Heatmap(
            z=big,
            text=hover,
            hovertemplate="%{text}<extra></extra>",
            hoverongaps=False,
            colorscale=ATTENTION_SCALE,
            zmin=0,
            zmax=top or 1.0,
            colorbar=dict(title="weight", len=0.5),
            xgap=0,
            ygap=0,
        )
    )
    fig.update_layout(
        title=f"Heads sorted by attention mass on {metric}",
        template="plotly_white",
        plot_bgcolor="#FFFFFF",
        annotations=annotations,
        shapes=shapes,
        height=80 + 170 * nrows,
        margin=dict(l=20, r=20, t=80, b=20),
        xaxis=dict(showticklabels=False, showgrid=False, zeroline=False),
        yaxis=dict(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed"),
    )
    return fig
