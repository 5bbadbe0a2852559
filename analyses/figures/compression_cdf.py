"""compression-cdf (paper Fig. 6): CDF of the per-block compression ratio memento / block, one panel per
domain, one line per source (trace file or run; the paper's lines are models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from memento_lens.runtime.rundir.schema import TOKENS, TRACES

from ..palette import color, series_color
from ..stats import block_stats, blocks_from_tokens_table
from .base import Figure, FigureInputs, MissingInputs, md_table

UNKNOWN = "unknown"  # analyses.stats' domain of a trace that records none (toy, generate, replay)
NO_DOMAIN = "all blocks, no domain recorded"


def panel_titles(df: pd.DataFrame) -> list[str]:
    """One title per panel (domain): its name and block count; traces that record no domain (the toy, a
    generated run) are titled as such, never "unknown"."""
    out = []
    for dom in dict.fromkeys(df["domain"]):
        n = int((df["domain"] == dom).sum())
        out.append(f"{NO_DOMAIN if dom == UNKNOWN else dom} ({n} blocks)")
    return out


class CompressionCDF(Figure):
    name = "compression-cdf"
    title = "Compression ratio (memento / block) per block"
    paper = (
        "Memento paper Fig. 6: empirical CDF per domain (panels), one line per source (trace file or run). "
        "Ratio in characters when every source has the text (trace files only), in tokens otherwise."
    )

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        parts = []
        if inputs.traces:
            if inputs.token_ids is None:
                raise MissingInputs("traces given without their tokenizer's memento token ids")
            b = block_stats(inputs.traces, inputs.token_ids)
            src = {t.trace_id: Path(str(t.meta.get("source_file") or "traces")).stem for t in inputs.traces}
            parts.append(b.assign(source=b["trace"].map(src)))
        for run in inputs.runs:
            if run.has(TOKENS):
                tr = run.table(TRACES) if run.has(TRACES) else None
                b = blocks_from_tokens_table(run.table(TOKENS), tr)
                parts.append(b.assign(source=run.path.name))
        if not parts:
            raise MissingInputs("needs trace files (--traces) or a run with tokens.parquet")
        blocks = pd.concat(parts, ignore_index=True)
        if blocks.empty:
            raise MissingInputs("no completed block (block + memento) in the inputs")
        unit = "chars" if blocks["ratio_chars"].notna().all() else "tokens"
        blocks = blocks.assign(ratio=blocks[f"ratio_{unit}"])
        blocks = blocks[blocks["ratio"].notna()]
        domains = sorted(blocks["domain"].unique())
        panels = [(d, blocks[blocks["domain"] == d]) for d in domains]
        if len(domains) > 1:
            panels.append(("all", blocks))
        out = []
        for dom, g in panels:
            for source, s in g.groupby("source", sort=True):
                r = np.sort(s["ratio"].to_numpy(float))
                out.append(
                    pd.DataFrame(
                        {
                            "domain": dom,
                            "source": source,
                            "unit": unit,
                            "ratio": r,
                            "cdf": np.arange(1, len(r) + 1) / len(r),
                        }
                    )
                )
        return pd.concat(out, ignore_index=True)

    def plot(self, df: pd.DataFrame):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        domains = list(dict.fromkeys(df["domain"]))
        sources = list(dict.fromkeys(df["source"]))
        fig = make_subplots(rows=1, cols=len(domains), subplot_titles=panel_titles(df), shared_yaxes=True)
        shown: set[str] = set()
        for i, dom in enumerate(domains, start=1):
            for source, g in df[df["domain"] == dom].groupby("source", sort=False):
                med = float(np.median(g["ratio"]))
                # One source: colour by domain (palette); several: colour by source, consistent across panels.
                col = color("domain", dom) if len(sources) == 1 else series_color(sources.index(source))
                fig.add_trace(
                    go.Scatter(
                        x=g["ratio"],
                        y=g["cdf"],
                        mode="lines",
                        line_shape="hv",
                        name=source if len(sources) > 1 else dom,
                        legendgroup=source,
                        showlegend=len(sources) > 1 and source not in shown,
                        hovertemplate=f"{source}<br>ratio %{{x:.3f}}<br>CDF %{{y:.2f}}"
                        f"<br>median {med:.3f} (n={len(g)})",
                        line=dict(color=col, width=2),
                    ),
                    1,
                    i,
                )
                shown.add(source)
        unit = df["unit"].iloc[0] if len(df) else "chars"
        fig.update_xaxes(title_text=f"memento / block ({unit})", rangemode="tozero", matches="x")
        fig.update_yaxes(title_text="CDF", range=[0, 1.02], row=1, col=1)
        fig.update_layout(title=self.title, template="plotly_white")
        return fig

    def markdown(self, df: pd.DataFrame) -> str:
        df = df.assign(domain=df["domain"].replace(UNKNOWN, NO_DOMAIN))
        g = df.groupby(["domain", "source"], sort=False)["ratio"]
        table = pd.DataFrame(
            {
                "blocks": g.size(),
                "median": g.median(),
                "p25": g.quantile(0.25),
                "p75": g.quantile(0.75),
                "mean": g.mean(),
            }
        ).reset_index()
        unit = df["unit"].iloc[0] if len(df) else "chars"
        return f"## {self.title}\n\n{self.paper} Unit: {unit}.\n\n{md_table(table)}\n"
