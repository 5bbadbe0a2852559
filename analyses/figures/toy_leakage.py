"""toy-leakage (paper Fig. 13): masked probe accuracy on the toy model by layer, by distance from the
target block, and across training checkpoints next to task accuracy; the normal world beside the restart world
(mementos recomputed without their block: what the memento text alone carries), the on-distribution reference
worlds where the run has them (same-sum block, foreign passcode, kept delimiters hidden) and the exact text
ceiling."""

from __future__ import annotations

import pandas as pd

from ..palette import CHANCE_COLOR, MODE_COLORS, SERIES_COLORS, TASK_COLOR, color
from .base import (
    PASSCODE_CHANCE,
    Figure,
    FigureInputs,
    MissingInputs,
    all_head_rows,
    checkpoint_order,
    md_table,
    mean_over_seeds,
    normalize_models,
)
from .probe_conditions import NEEDS

RESTART_COLOR = MODE_COLORS["restart"]  # the restart world: same tokens, memento recomputed without its block
PANELS = ("by_layer", "by_distance", "by_checkpoint")
ALL_LAYERS = -999  # probes.passcode.ALL_LAYERS: rows whose features concatenate every layer (older runs: -1)
# series -> (value, ci_low, ci_high) columns of probe_results.parquet
WORLDS = {
    "masked": ("accuracy", "ci_low", "ci_high"),
    "masked, restart world": ("restart_accuracy", "restart_ci_low", "restart_ci_high"),
    "masked, same-sum world": ("same_sum_accuracy", "same_sum_ci_low", "same_sum_ci_high"),
    "masked, foreign passcode": ("foreign_accuracy", "foreign_ci_low", "foreign_ci_high"),
    "masked, delimiters hidden": ("delimiter_hidden_accuracy", "delimiter_hidden_ci_low", "delimiter_hidden_ci_high"),
    "text ceiling": ("text_ceiling", None, None),
}
REFERENCE_COLORS = {  # the reference worlds: colours of the palette's series list not used above
    "masked, same-sum world": SERIES_COLORS[6],
    "masked, foreign passcode": SERIES_COLORS[7],
    "masked, delimiters hidden": SERIES_COLORS[5],
}


def world_means(df: pd.DataFrame, by: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """Per series of :data:`WORLDS` present in ``df``: mean value and CI bounds over seeds, as
    ``accuracy`` / ``ci_low`` / ``ci_high`` / ``n_seeds``."""
    out = []
    for series, (value, lo, hi) in WORLDS.items():
        if value not in df or df[value].isna().all():
            continue
        d = df.assign(layer=df["layer"].where(df["layer"] >= 0, ALL_LAYERS)).rename(columns={value: "_v"})
        d = d.drop(columns=[c for c in ("accuracy", "ci_low", "ci_high") if c in d and c not in (lo, hi)])
        d = d.rename(columns={"_v": "accuracy", **({lo: "ci_low", hi: "ci_high"} if lo else {})})
        out.append((series, mean_over_seeds(d, by)))
    return out


COLUMNS = ["panel", "model", "series", "x", "x_label", "value", "ci_low", "ci_high", "n_seeds"]


class ToyLeakage(Figure):
    name = "toy-leakage"
    title = "Masked leakage on the toy model"
    paper = (
        "Memento paper Fig. 13 (toy, keep 0): masked-condition probe accuracy (a) by layer at the nearest "
        "distance, (b) by distance at the last layer, (c) across checkpoints at the last layer and nearest "
        "distance, next to task accuracy. Models whose name contains 'toy' are used when present."
    )

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        pr = inputs.table("probe_results.parquet")
        if pr is None or pr.empty:
            raise MissingInputs(NEEDS)
        pr = normalize_models(pr)
        pr = pr[pr["condition"] == "masked"]
        pr = all_head_rows(pr)
        toy = pr[pr["model"].astype(str).str.contains("toy", case=False)]
        pr = toy if not toy.empty else pr
        if pr.empty:
            raise MissingInputs("probe_results.parquet has no masked-condition rows")
        if pr["probe"].nunique() > 1:  # one probe type per figure: the paper's MLP when present
            pr = pr[pr["probe"] == ("mlp" if (pr["probe"] == "mlp").any() else sorted(pr["probe"].unique())[0])]
        parts = []
        for model, g in pr.groupby("model", sort=True):
            order = checkpoint_order(g["checkpoint"])
            last = g[g["checkpoint"].astype(str) == order[-1]]
            near = min(d for d in g["distance"].unique() if d > 0) if (g["distance"] > 0).any() else g["distance"].min()
            top = int(last["layer"].max())
            for series, a in world_means(last[last["distance"] == near], ["layer"]):
                xs = a["layer"].where(a["layer"] >= 0, top + 1)
                labels = a["layer"].map(lambda v: "all layers" if v < 0 else f"layer {v}")
                parts.append(self._panel(a, "by_layer", model, series, xs, labels))
            for series, b in world_means(last[last["layer"] == top], ["distance"]):
                parts.append(
                    self._panel(
                        b,
                        "by_distance",
                        model,
                        series,
                        b["distance"],
                        b["distance"].map(lambda v: f"+{v}" if v > 0 else str(v)),
                    )
                )
            if len(order) > 1:
                sel = g[(g["layer"] == top) & (g["distance"] == near)]
                idx = {ck: i for i, ck in enumerate(order)}
                for series, c in world_means(sel, ["checkpoint"]):
                    c = c.assign(x=c["checkpoint"].astype(str).map(idx)).sort_values("x")
                    parts.append(self._panel(c, "by_checkpoint", model, series, c["x"], c["checkpoint"].astype(str)))
                if "task_accuracy" in sel and sel["task_accuracy"].notna().any():
                    t = sel.groupby("checkpoint")["task_accuracy"].agg(["mean", "size"]).reset_index()
                    t = t.assign(x=t["checkpoint"].astype(str).map(idx)).sort_values("x")
                    parts.append(
                        pd.DataFrame(
                            {
                                "panel": "by_checkpoint",
                                "model": model,
                                "series": "task_accuracy",
                                "x": t["x"].astype(float),
                                "x_label": t["checkpoint"].astype(str),
                                "value": t["mean"],
                                "ci_low": float("nan"),
                                "ci_high": float("nan"),
                                "n_seeds": t["size"],
                            }
                        )
                    )
        return pd.concat(parts, ignore_index=True)[COLUMNS]

    @staticmethod
    def _panel(agg: pd.DataFrame, panel: str, model, series: str, x, labels) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "panel": panel,
                "model": model,
                "series": series,
                "x": x.astype(float).to_numpy(),
                "x_label": labels.to_numpy(),
                "value": agg["accuracy"].to_numpy(),
                "ci_low": agg.get("ci_low", pd.Series(float("nan"), index=agg.index)).to_numpy(),
                "ci_high": agg.get("ci_high", pd.Series(float("nan"), index=agg.index)).to_numpy(),
                "n_seeds": agg["n_seeds"].to_numpy(),
            }
        )

    def plot(self, df: pd.DataFrame):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        titles = {
            "by_layer": "(a) by layer",
            "by_distance": "(b) by distance from the block",
            "by_checkpoint": "(c) across checkpoints",
        }
        present = [p for p in PANELS if (df["panel"] == p).any()]
        fig = make_subplots(rows=1, cols=len(present), subplot_titles=[titles[p] for p in present])
        dashes = {m: d for m, d in zip(dict.fromkeys(df["model"]), ("solid", "dash", "dot", "dashdot"))}
        for i, panel in enumerate(present, start=1):
            for (model, series), g in df[df["panel"] == panel].groupby(["model", "series"], sort=False):
                col = TASK_COLOR if series == "task_accuracy" else color("condition", "masked")
                if series == "masked, restart world":
                    col = RESTART_COLOR
                elif series in REFERENCE_COLORS:
                    col = REFERENCE_COLORS[series]
                elif series == "text ceiling":
                    col = CHANCE_COLOR
                err = None
                if g["ci_low"].notna().all():
                    err = dict(
                        type="data",
                        symmetric=False,
                        array=g["ci_high"] - g["value"],
                        arrayminus=g["value"] - g["ci_low"],
                    )
                name = f"{series} ({model})" if len(dashes) > 1 else series
                fig.add_trace(
                    go.Scatter(
                        x=g["x"],
                        y=g["value"],
                        error_y=err,
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=name not in {t.name for t in fig.data},
                        line=dict(color=col, dash="dot" if series == "text ceiling" else dashes[model]),
                        customdata=g["x_label"],
                        hovertemplate="%{customdata}: %{y:.3f}",
                    ),
                    1,
                    i,
                )
            fig.add_hline(y=PASSCODE_CHANCE, line=dict(color=CHANCE_COLOR, dash="dash"), row=1, col=i)
            sub = df[df["panel"] == panel].drop_duplicates("x").sort_values("x")
            fig.update_xaxes(tickvals=sub["x"].tolist(), ticktext=sub["x_label"].tolist(), row=1, col=i)
        fig.update_yaxes(title_text="accuracy (normal vs reference worlds)", rangemode="tozero", row=1, col=1)
        fig.update_layout(title=self.title, template="plotly_white")
        return fig

    def markdown(self, df: pd.DataFrame) -> str:
        out = [f"## {self.title}\n\n{self.paper}\n"]
        for panel in PANELS:
            sub = df[df["panel"] == panel]
            if len(sub):
                out.append(f"### {panel}\n\n{md_table(sub.drop(columns=['panel', 'x']))}\n")
        return "\n".join(out)
