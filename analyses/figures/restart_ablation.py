"""restart-ablation (paper Table 3 + the causal patching curve): normal vs restart memento KV, and the
effect of patching KV layer by layer."""

from __future__ import annotations

import pandas as pd

from ..palette import color
from .base import Figure, FigureInputs, MissingInputs, md_table

COLUMNS = ["panel", "model", "checkpoint", "variant", "direction", "layer", "metric", "value", "ci_low", "ci_high", "n"]


class RestartAblation(Figure):
    name = "restart-ablation"
    title = "Restart ablation and KV patching"
    paper = ("Memento paper Table 3: the task metric with normal memento KV vs restart (memento KV recomputed "
             "without its block); and the causal patching curve (metric by patched layer). Rows with layer -1 "
             "cover all layers.")

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        ab = inputs.table("ablations.parquet")
        if ab is None or ab.empty:
            raise MissingInputs("needs ablations.parquet in a --run directory (written by the probes' restart "
                                "ablation / patching); trace files alone carry none")
        ab = ab.copy()
        for c in ("ci_low", "ci_high", "n", "direction", "checkpoint"):
            if c not in ab:
                ab[c] = pd.NA
        restart = ab[(ab["experiment"] == "restart") & (ab["layer"] == -1)].assign(panel="restart")
        patch = ab[(ab["experiment"] == "patch") & (ab["layer"] >= 0)].assign(panel="patch")
        out = pd.concat([restart, patch], ignore_index=True)
        if out.empty:
            raise MissingInputs("ablations.parquet has no restart (layer -1) or patch (layer >= 0) rows")
        return out.sort_values(["panel", "model", "metric", "variant", "layer"], kind="stable",
                               ascending=[False, True, True, True, True]).reset_index(drop=True)[COLUMNS]

    def plot(self, df: pd.DataFrame):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        panels = [p for p in ("restart", "patch") if (df["panel"] == p).any()]
        titles = {"restart": "normal vs restart", "patch": "KV patching by layer"}
        fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[titles[p] for p in panels])
        for i, panel in enumerate(panels, start=1):
            sub = df[df["panel"] == panel]
            keys = ["variant"] if panel == "restart" else ["variant", "direction"]
            for key, g in sub.groupby(keys, sort=False, dropna=False):
                key = key if isinstance(key, tuple) else (key,)
                variant = str(key[0])
                label = " / ".join(str(k) for k in key if pd.notna(k))
                err = None
                if g["ci_low"].notna().all() and g["ci_high"].notna().all():
                    err = dict(type="data", symmetric=False, array=(g["ci_high"] - g["value"]).astype(float),
                               arrayminus=(g["value"] - g["ci_low"]).astype(float))
                if panel == "restart":
                    x = [f"{m} · {met}" for m, met in zip(g["model"], g["metric"])]
                    fig.add_trace(go.Bar(x=x, y=g["value"], error_y=err, name=label,
                                         marker_color=color("variant", variant)), 1, i)
                else:
                    fig.add_trace(go.Scatter(x=g["layer"], y=g["value"], error_y=err, mode="lines+markers",
                                             name=f"patch {label}", line=dict(color=color("variant", variant))), 1, i)
            if panel == "patch":
                fig.update_xaxes(title_text="layer", row=1, col=i)
                fig.update_yaxes(title_text=", ".join(sorted(set(sub["metric"].astype(str)))), row=1, col=i)
        fig.update_layout(title=self.title, template="plotly_white", barmode="group")
        return fig

    def markdown(self, df: pd.DataFrame) -> str:
        out = [f"## {self.title}\n\n{self.paper}\n"]
        r = df[df["panel"] == "restart"]
        if len(r):
            t = r.pivot_table(index=["model", "metric"], columns="variant", values="value", sort=False).reset_index()
            if {"normal", "restart"} <= set(t.columns):
                t["delta"] = t["restart"] - t["normal"]
            out.append(f"### Table 3: normal vs restart\n\n{md_table(t)}\n")
        p = df[df["panel"] == "patch"]
        if len(p):
            out.append(f"### Patching curve\n\n{md_table(p.drop(columns=['panel']))}\n")
        return "\n".join(out)
