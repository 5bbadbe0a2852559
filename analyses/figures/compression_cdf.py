"""compression-cdf (paper Fig. 6): CDF of the per-block compression ratio memento / block, by domain."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..palette import color
from ..stats import block_stats, blocks_from_tokens_table
from .base import Figure, FigureInputs, MissingInputs, md_table


class CompressionCDF(Figure):
    name = "compression-cdf"
    title = "Compression ratio (memento / block) per block"
    paper = ("Memento paper Fig. 6: empirical CDF per domain. Ratio in characters when the trace text is known "
             "(trace files), in tokens otherwise (run directories).")

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        if inputs.traces:
            if inputs.token_ids is None:
                raise MissingInputs("traces given without their tokenizer's memento token ids")
            blocks = block_stats(inputs.traces, inputs.token_ids)
        else:
            tokens = inputs.table("tokens.parquet")
            if tokens is None:
                raise MissingInputs("needs trace files (--traces) or a run with tokens.parquet")
            blocks = blocks_from_tokens_table(tokens, inputs.table("traces.parquet"))
        if blocks.empty:
            raise MissingInputs("no completed block (block + memento) in the inputs")
        unit = "chars" if blocks["ratio_chars"].notna().all() else "tokens"
        ratio = blocks[f"ratio_{unit}"]
        blocks = blocks.assign(ratio=ratio)[ratio.notna()]
        groups = [(d, g) for d, g in blocks.groupby("domain", sort=True)]
        if len(groups) > 1:
            groups.append(("all", blocks))
        parts = []
        for dom, g in groups:
            r = np.sort(g["ratio"].to_numpy(float))
            parts.append(pd.DataFrame({"domain": dom, "unit": unit, "ratio": r,
                                       "cdf": np.arange(1, len(r) + 1) / len(r)}))
        return pd.concat(parts, ignore_index=True)

    def plot(self, df: pd.DataFrame):
        import plotly.graph_objects as go

        fig = go.Figure()
        for dom, g in df.groupby("domain", sort=False):
            med = float(np.median(g["ratio"]))
            fig.add_trace(go.Scatter(x=g["ratio"], y=g["cdf"], mode="lines", line_shape="hv",
                                     name=f"{dom} (n={len(g)}, median {med:.2f})",
                                     line=dict(color=color("domain", dom), width=2)))
        unit = df["unit"].iloc[0] if len(df) else "chars"
        fig.update_layout(title=self.title, xaxis_title=f"memento / block ({unit})", yaxis_title="CDF",
                          yaxis_range=[0, 1.02], template="plotly_white")
        return fig

    def markdown(self, df: pd.DataFrame) -> str:
        g = df.groupby("domain", sort=False)["ratio"]
        table = pd.DataFrame({"blocks": g.size(), "median": g.median(), "p25": g.quantile(0.25),
                              "p75": g.quantile(0.75), "mean": g.mean()}).reset_index()
        unit = df["unit"].iloc[0] if len(df) else "chars"
        return f"## {self.title}\n\n{self.paper} Unit: {unit}.\n\n{md_table(table)}\n"
