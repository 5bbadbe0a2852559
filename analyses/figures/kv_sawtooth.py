"""kv-sawtooth (paper Fig. 5): KV-cache size per generated token, vanilla vs memento, peak and AUC annotated."""

from __future__ import annotations

import numpy as np
import pandas as pd
from memento_lens.runtime.rundir.schema import OCCUPANCY, TRACES

from ..kv import GB, KTOK, Occupancy, account_trace, default_configs, occupancies_from_table, resolve_spec
from ..palette import color
from .base import Figure, FigureInputs, MissingInputs, md_table

MODES = ("vanilla", "memento")


class KVSawtooth(Figure):
    name = "kv-sawtooth"
    title = "KV cache per generated token (vanilla vs memento)"
    paper = "Memento paper Fig. 5. Peak = max KV over the trace; AUC = area under KV over generated tokens."

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        curves, source = self._curves(inputs)
        rows = []
        for c in curves:
            gen = c.tokens[c.prompt_len :]
            rows.append(
                pd.DataFrame(
                    {
                        "trace": c.trace,
                        "mode": c.mode,
                        "generated_token": np.arange(len(gen), dtype=np.int64),
                        "tokens": gen.astype(np.int64),
                        "kv_gb": gen * c.bytes_per_token / GB,
                    }
                )
            )
        df = pd.concat(rows, ignore_index=True)
        # which bytes-per-token rule made the GB (stated in the title and the Markdown; not a CSV column)
        df.attrs["kv_rule"] = f"{curves[0].bytes_per_token:,} bytes/token: {source}" if curves else ""
        return df

    def _curves(self, inputs: FigureInputs):
        if inputs.traces:
            trace = next((t for t in inputs.traces if inputs.trace_id in (None, t.trace_id)), None)
            if trace is None:
                raise MissingInputs(f"no trace {inputs.trace_id!r} among the trace files")
            if inputs.token_ids is None:
                raise MissingInputs("traces given without their tokenizer's memento token ids")
            spec = resolve_spec(inputs.spec)
            curves = account_trace(trace, inputs.token_ids, default_configs(), spec)
            named = "named by --model" if inputs.spec is not None else "the default for trace files"
            return [curves[m] for m in MODES], f"{spec.name} ({named})"
        occ = inputs.table(OCCUPANCY)
        if occ is None or occ.empty:
            raise MissingInputs("needs trace files (--traces) or a run with occupancy.parquet")
        tid = inputs.trace_id if inputs.trace_id is not None else str(occ["trace"].iloc[0])
        occ = occ[(occ["trace"].astype(str) == tid) & occ["mode"].isin(MODES)]
        if occ.empty:
            raise MissingInputs(f"occupancy.parquet has no vanilla/memento rows for trace {tid!r}")
        occ = occ[occ["run"] == occ["run"].iloc[0]]
        tr = inputs.table(TRACES)
        prompt = {}
        if tr is not None:
            prompt = dict(zip(tr["trace"].astype(str), tr["prompt_len"].astype(int)))
        # One bytes-per-token rule per run: the run's own model (the bytes its occupancy.parquet recorded)
        # unless the user names another (spec).
        spec = resolve_spec(inputs.spec) if inputs.spec is not None else None
        bpt = spec.bytes_per_token if spec is not None else None
        source = f"{spec.name} (named by --model)" if spec is not None else f"run {occ['run'].iloc[0]}'s own model"
        curves = {c.mode: c for c in occupancies_from_table(occ.drop(columns="run"), prompt, bpt)}
        if "vanilla" not in curves:  # a memento-only run: the same stream without eviction holds step + 1 tokens
            m = curves["memento"]
            curves["vanilla"] = Occupancy.vanilla(len(m.tokens), m.bytes_per_token, m.prompt_len, m.trace)
        return [curves[m] for m in MODES if m in curves], source

    @staticmethod
    def summary(df: pd.DataFrame) -> pd.DataFrame:
        """Peak and AUC of each plotted curve, from the plotted numbers."""
        g = df.groupby("mode", sort=False)
        out = pd.DataFrame(
            {"peak_tokens": g["tokens"].max(), "peak_gb": g["kv_gb"].max(), "auc_gb_ktok": g["kv_gb"].sum() / KTOK}
        ).reset_index()
        if "vanilla" in set(out["mode"]):
            base = out.set_index("mode").loc["vanilla"]
            out["peak_reduction"] = base["peak_gb"] / out["peak_gb"]
            out["auc_reduction"] = base["auc_gb_ktok"] / out["auc_gb_ktok"]
        return out

    def plot(self, df: pd.DataFrame):
        import plotly.graph_objects as go

        fig = go.Figure()
        summ = self.summary(df).set_index("mode")
        for mode, g in df.groupby("mode", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=g["generated_token"],
                    y=g["kv_gb"],
                    mode="lines",
                    name=mode,
                    line=dict(color=color("mode", mode), width=1.5),
                )
            )
            s = summ.loc[mode]
            fig.add_hline(y=s["peak_gb"], line=dict(color=color("mode", mode), dash="dot", width=1))
            fig.add_annotation(
                x=1.0,
                xref="paper",
                y=s["peak_gb"],
                xanchor="right",
                yanchor="bottom",
                showarrow=False,
                font=dict(color=color("mode", mode), size=11),
                text=f"{mode}: peak {s['peak_gb']:.3g} GB, AUC {s['auc_gb_ktok']:.3g} GB·ktok",
            )
        trace = str(df["trace"].iloc[0]) if len(df) else ""
        fig.update_layout(
            title=f"{self.title}<br><sup>trace {trace}; {df.attrs.get('kv_rule', '')}</sup>",
            xaxis_title="generated token",
            yaxis_title="KV cache (GB)",
            template="plotly_white",
            legend=dict(x=0.01, y=0.99),
        )
        return fig

    def markdown(self, df: pd.DataFrame) -> str:
        trace = str(df["trace"].iloc[0]) if len(df) else ""
        return (
            f"## {self.title}\n\n{self.paper} Trace `{trace}`; {df.attrs.get('kv_rule', '')}; GB = 2^30 bytes, "
            "ktok = 1000 tokens.\n\n"
            f"{md_table(self.summary(df))}\n"
        )
