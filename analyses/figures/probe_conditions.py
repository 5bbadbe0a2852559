"""probe-conditions (paper Fig. 10 / Table 4): passcode probe accuracy by layer, direct / masked /
causal control, with confidence intervals and the chance line; the normal world beside the restart world (mementos
recomputed without their block: the memento text's share) and, where the run has them, the on-distribution
reference worlds (same-sum block, foreign passcode, the block's kept delimiters hidden), one panel each."""

from __future__ import annotations

import pandas as pd

from ..palette import CHANCE_COLOR, color
from .base import (
    PASSCODE_CHANCE,
    Figure,
    FigureInputs,
    MissingInputs,
    all_head_rows,
    checkpoint_order,
    layer_dtick,
    md_table,
    mean_over_seeds,
    normalize_models,
)

CONDITIONS = ("direct", "masked", "causal_control")
ALL_LAYERS = -999  # probes.passcode.ALL_LAYERS: every probed layer concatenated (runs before issue 20: -1)
WORLD_COLUMNS = {
    "normal": ("accuracy", "ci_low", "ci_high"),
    "restart": ("restart_accuracy", "restart_ci_low", "restart_ci_high"),
    "same_sum": ("same_sum_accuracy", "same_sum_ci_low", "same_sum_ci_high"),
    "foreign": ("foreign_accuracy", "foreign_ci_low", "foreign_ci_high"),
    "delimiter_hidden": ("delimiter_hidden_accuracy", "delimiter_hidden_ci_low", "delimiter_hidden_ci_high"),
}


def is_all_layers(layer) -> bool:
    """The concatenation rows: no layer index is negative in a result table (ALL_LAYERS, or -1 in older runs)."""
    return int(layer) < 0


NEEDS = "needs probe_results.parquet in a --run directory (written by the probes); trace files alone carry none"


def select_rows(pr: pd.DataFrame, conditions=CONDITIONS) -> pd.DataFrame:
    """The rows a by-layer plot uses: all-head probes, each model's last checkpoint, and per (model,
    condition) the distance nearest the target block (masked +1 = the paper's M3)."""
    pr = pr[pr["condition"].isin(conditions)]
    pr = all_head_rows(pr)
    parts = []
    for (model, cond), g in pr.groupby(["model", "condition"], sort=False):
        last = checkpoint_order(g["checkpoint"])[-1]
        g = g[g["checkpoint"].astype(str) == last]
        d = min(g["distance"].unique(), key=lambda x: (abs(x), x < 0))
        parts.append(g[g["distance"] == d])
    return pd.concat(parts, ignore_index=True) if parts else pr.iloc[:0]


class ProbeConditions(Figure):
    name = "probe-conditions"
    title = "Passcode probe accuracy by layer"
    paper = (
        "Memento paper Fig. 10 / Table 4: direct = memento that saw the block, masked = the next memento "
        "(block already evicted), causal control = the memento before the block. Mean over seeds; chance "
        f"= {PASSCODE_CHANCE:.0%} (one of 10 digits)."
    )

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        pr = inputs.table("probe_results.parquet")
        if pr is None or pr.empty:
            raise MissingInputs(NEEDS)
        pr = normalize_models(pr)
        rows = select_rows(pr)
        if rows.empty:
            raise MissingInputs("probe_results.parquet has no direct/masked/causal_control rows")
        keys = ["model", "checkpoint", "probe", "condition", "distance", "layer"]
        parts = []
        for world, (value, lo, hi) in WORLD_COLUMNS.items():
            if value not in rows or rows[value].isna().all():
                continue
            d = rows[keys + [value, lo, hi]].assign(layer=rows["layer"].where(rows["layer"] >= 0, ALL_LAYERS))
            d = d.rename(columns={value: "accuracy", lo: "ci_low", hi: "ci_high"})
            parts.append(mean_over_seeds(d, keys).assign(world=world))
        out = pd.concat(parts, ignore_index=True)
        out["condition"] = pd.Categorical(out["condition"], CONDITIONS)
        out = out.sort_values(["model", "world", "probe", "condition", "layer"]).reset_index(drop=True)
        out["condition"] = out["condition"].astype(str)
        out["chance"] = PASSCODE_CHANCE
        return out

    def plot(self, df: pd.DataFrame):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if "world" not in df:
            df = df.assign(world="normal")
        panels = list(dict.fromkeys(zip(df["model"], df["world"])))
        fig = make_subplots(
            rows=1,
            cols=len(panels),
            subplot_titles=[f"{m} ({w} world)" for m, w in panels],
            shared_yaxes=True,
        )
        dashes = {p: d for p, d in zip(dict.fromkeys(df["probe"]), ("solid", "dash", "dot", "dashdot"))}
        for i, (model, world) in enumerate(panels, start=1):
            sub = df[(df["model"] == model) & (df["world"] == world)]
            top = int(sub["layer"].max())
            for (probe, cond), g in sub.groupby(["probe", "condition"], sort=False):
                g = g.assign(x=g["layer"].where(g["layer"] >= 0, top + 1)).sort_values("x")
                err = None
                if "ci_low" in g and g["ci_low"].notna().all():
                    err = dict(
                        type="data",
                        symmetric=False,
                        array=g["ci_high"] - g["accuracy"],
                        arrayminus=g["accuracy"] - g["ci_low"],
                    )
                fig.add_trace(
                    go.Scatter(
                        x=g["x"],
                        y=g["accuracy"],
                        error_y=err,
                        mode="lines+markers",
                        name=f"{cond} ({probe})",
                        legendgroup=f"{cond}{probe}",
                        showlegend=i == 1,
                        line=dict(color=color("condition", cond), dash=dashes[probe]),
                    ),
                    1,
                    i,
                )
            label = dict(annotation_text="chance") if i == 1 else {}  # None would print "new text"
            fig.add_hline(y=PASSCODE_CHANCE, line=dict(color=CHANCE_COLOR, dash="dash"), row=1, col=i, **label)
            layers = sorted(int(v) for v in sub["layer"].unique())
            ticks = [(top + 1 if is_all_layers(v) else v, "all" if is_all_layers(v) else str(v)) for v in layers]
            fig.update_xaxes(
                title_text="layer",
                row=1,
                col=i,
                tickvals=[t for t, _ in ticks] if len(ticks) <= 13 else None,
                ticktext=[t for _, t in ticks] if len(ticks) <= 13 else None,
                dtick=layer_dtick(sub["layer"]),
            )
        fig.update_yaxes(title_text="probe accuracy (mean over 5 digits)", range=[0, 1], row=1, col=1)
        fig.update_layout(title=self.title, template="plotly_white")
        return fig

    def markdown(self, df: pd.DataFrame) -> str:
        t = df.assign(accuracy=df["accuracy"] * 100).pivot_table(
            index=["model", "world", "probe", "condition"] if "world" in df else ["model", "probe", "condition"],
            columns="layer",
            values="accuracy",
            sort=False,
        )
        t.columns = ["all layers" if is_all_layers(c) else f"layer {c}" for c in t.columns]
        return (
            f"## {self.title} (accuracy, %)\n\n{self.paper}\n\n{md_table(t.reset_index())}\n\n"
            f"### Plotted values\n\n{md_table(df)}\n"
        )
