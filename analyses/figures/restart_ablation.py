"""restart-ablation (paper Table 3 + the causal patching curve): normal vs restart memento KV, and the
effect of patching memento KV layer by layer.

Rows used from ``ablations.parquet``: ``experiment == "restart"`` at layer -1 (one bar per variant, one
panel per metric); ``experiment == "patch"`` with all heads (head -1): layer >= 0 gives the curve per
direction (one panel per metric), layer -1 the unpatched normal/restart baselines (dashed lines).
"""

from __future__ import annotations

import pandas as pd
from memento_lens.runtime.rundir.schema import ABLATIONS, ALL_HEADS, NO_LAYER

from ..palette import color, series_color
from .base import Figure, FigureInputs, MissingInputs, layer_dtick, md_table

# Panel titles: short enough for a 960-px PNG with four panels a row (PNG_SIZE).
METRIC_LABELS = {
    "accuracy_teacher_forced": "accuracy (teacher-forced)",
    "nll_teacher_forced": "NLL (teacher-forced)",
    "kl_teacher_forced": "KL to normal",
    "memento_exact_generated": "memento exact (greedy)",
    "delta_accuracy": "Δ accuracy",
    "delta_nll": "Δ NLL",
    "accuracy": "accuracy",
    "nll": "NLL",
    "kl": "KL",
}

COLUMNS = ["panel", "model", "checkpoint", "variant", "direction", "layer", "metric", "value", "ci_low", "ci_high", "n"]


class RestartAblation(Figure):
    name = "restart-ablation"
    title = "Restart ablation and KV patching"
    paper = (
        "Memento paper Table 3: the task metric with normal memento KV vs restart (memento KV recomputed "
        "without its block); and the causal patching curve (metric by patched layer, all heads; dashed: "
        "unpatched baselines)."
    )

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        ab = inputs.table(ABLATIONS)
        if ab is None or ab.empty:
            raise MissingInputs(
                "needs ablations.parquet in a --run directory (written by the probes' restart "
                "ablation / patching); trace files alone carry none"
            )
        ab = ab.copy()
        for c in ("ci_low", "ci_high", "n", "direction", "checkpoint", "head"):
            if c not in ab:
                ab[c] = ALL_HEADS if c == "head" else pd.NA
        ab["direction"] = ab["direction"].fillna("").astype(str)
        ab["checkpoint"] = ab["checkpoint"].fillna("").astype(str)
        all_heads = ab["head"].fillna(ALL_HEADS) == ALL_HEADS
        restart = ab[(ab["experiment"] == "restart") & (ab["layer"] == NO_LAYER)].assign(panel="restart")
        patch = ab[(ab["experiment"] == "patch") & all_heads]
        curve = patch[patch["layer"] >= 0].assign(panel="patch")
        base = patch[(patch["layer"] == NO_LAYER) & patch["metric"].isin(curve["metric"].unique())].assign(
            panel="patch_base"
        )
        out = pd.concat([restart, curve, base], ignore_index=True)
        if out.empty:
            raise MissingInputs("ablations.parquet has no restart rows at layer -1 and no all-head patch rows")
        order = {"restart": 0, "patch": 1, "patch_base": 2}
        out = out.sort_values(
            ["panel", "model", "metric", "direction", "variant", "layer"],
            kind="stable",
            key=lambda c: c.map(order) if c.name == "panel" else c,
        )
        return out.reset_index(drop=True)[COLUMNS]

    def plot(self, df: pd.DataFrame):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        r_metrics = list(dict.fromkeys(df.loc[df["panel"] == "restart", "metric"]))
        p_metrics = list(dict.fromkeys(df.loc[df["panel"] == "patch", "metric"]))
        rows = [m for m in (r_metrics, p_metrics) if m]
        ncols = max(len(r) for r in rows)
        titles = []
        for kind, metrics in (("restart", r_metrics), ("patch", p_metrics)):
            if metrics:
                titles += [metric_label(m) for m in metrics] + [""] * (ncols - len(metrics))
        fig = make_subplots(
            rows=len(rows),
            cols=ncols,
            subplot_titles=titles,
            vertical_spacing=0.22 if len(rows) > 1 else 0.1,
            horizontal_spacing=0.06,
        )
        fig.update_annotations(font_size=11)  # the subplot titles
        shown: set[str] = set()
        row = 1
        if r_metrics:
            for j, metric in enumerate(r_metrics, start=1):
                sub = df[(df["panel"] == "restart") & (df["metric"] == metric)]
                for variant, g in sub.groupby("variant", sort=False):
                    fig.add_trace(
                        go.Bar(
                            x=[f"{m} {c}".strip() for m, c in zip(g["model"], g["checkpoint"])],
                            y=g["value"],
                            error_y=_err(g),
                            name=str(variant),
                            legendgroup=str(variant),
                            showlegend=str(variant) not in shown,
                            marker_color=color("variant", str(variant)),
                        ),
                        row,
                        j,
                    )
                    shown.add(str(variant))
            row += 1
        if p_metrics:
            directions = list(dict.fromkeys(df.loc[df["panel"] == "patch", "direction"]))
            for j, metric in enumerate(p_metrics, start=1):
                sub = df[(df["panel"] == "patch") & (df["metric"] == metric)]
                for (model, direction, variant), g in sub.groupby(["model", "direction", "variant"], sort=False):
                    name = f"patch {direction or variant}"
                    fig.add_trace(
                        go.Scatter(
                            x=g["layer"],
                            y=g["value"],
                            error_y=_err(g),
                            mode="lines+markers",
                            name=name,
                            legendgroup=name,
                            showlegend=name not in shown,
                            line=dict(color=series_color(directions.index(direction))),
                        ),
                        row,
                        j,
                    )
                    shown.add(name)
                for b in df[(df["panel"] == "patch_base") & (df["metric"] == metric)].itertuples():
                    fig.add_hline(
                        y=b.value,
                        row=row,
                        col=j,
                        line=dict(color=color("variant", str(b.variant)), dash="dash", width=1),
                    )
                fig.update_xaxes(title_text="patched layer", row=row, col=j, dtick=layer_dtick(sub["layer"]))
        for r, kind in enumerate([k for k, m in (("restart ablation", r_metrics), ("KV patching", p_metrics)) if m], 1):
            fig.update_yaxes(title_text=kind, row=r, col=1)  # each row's experiment, named once
        fig.update_layout(title=figure_title(df), template="plotly_white", barmode="group")
        return fig

    def markdown(self, df: pd.DataFrame) -> str:
        out = [f"## {figure_title(df)}\n\n{self.paper}\n"]
        r = df[df["panel"] == "restart"]
        if len(r):
            t = r.pivot_table(
                index=["model", "checkpoint", "metric"], columns="variant", values="value", sort=False
            ).reset_index()
            if {"normal", "restart"} <= set(t.columns):
                t["delta"] = t["restart"] - t["normal"]
            t.columns.name = None
            out.append(f"### Table 3: normal vs restart\n\n{md_table(t)}\n")
        p = df[df["panel"].isin(["patch", "patch_base"])]
        if len(p):
            out.append(
                f"### Patching (all heads; layer -1 = unpatched baseline)\n\n{md_table(p.drop(columns=['panel']))}\n"
            )
        return "\n".join(out)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def figure_title(df: pd.DataFrame) -> str:
    """What was run: the restart ablation, KV patching, or both (never a part that did not run)."""
    ran = set(df["panel"])
    restart, patch = "restart" in ran, bool(ran & {"patch", "patch_base"})
    if restart and patch:
        return "Restart ablation and KV patching"
    return "KV patching" if patch else "Restart ablation"


def _err(g: pd.DataFrame):
    if g["ci_low"].notna().all() and g["ci_high"].notna().all():
        return dict(
            type="data",
            symmetric=False,
            array=(g["ci_high"] - g["value"]).astype(float).tolist(),
            arrayminus=(g["value"] - g["ci_low"]).astype(float).tolist(),
        )
    return None
