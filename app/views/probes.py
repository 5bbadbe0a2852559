"""Probes and ablations: probe accuracy by layer / distance / checkpoint with CIs and the chance line;
restart-ablation and patching curves."""

import streamlit as st

from memento_lens.app import charts, state
from memento_lens.app.data import ABLATIONS, PROBES

st.title("Probes and ablations")
rd = state.run_or_stop()


def pick(container, label, df, col, key):
    if col not in df.columns:
        return df
    opts = sorted(df[col].dropna().unique().tolist(), key=str)
    if len(opts) <= 1:
        return df
    v = state.sticky(container.selectbox, label, opts, key=key)
    return df[df[col] == v]


st.subheader("Probe accuracy")
if not rd.has(PROBES):
    st.info(f"No probe results in this run ({PROBES}); run the probes on it to fill this section.")
else:
    with state.shown_errors():
        df = state.probe_results(*state.key(rd))
        xs = [x for x in ("layer", "distance", "checkpoint") if x in df.columns and df[x].nunique() > 0]
        x = st.radio("x axis", xs, horizontal=True, key="probe_x")
        cols = st.columns(5)
        d = pick(cols[0], "Model", df, "model", "probe_model")
        d = pick(cols[1], "Probe", d, "probe", "probe_kind")
        if "head" in d.columns and (d["head"] == -1).any():
            d = d[d["head"] == -1]
        for i, col in enumerate(c for c in ("checkpoint", "distance", "layer") if c != x):
            d = pick(cols[2 + i], col.capitalize(), d, col, f"probe_{col}")
        chance = rd.chance()
        if chance is None and "chance" in d.columns:
            chance = float(d["chance"].mean())
        st.plotly_chart(charts.probe_figure(d, x, chance), key="probes", width="stretch")
        if chance is None:
            st.caption("This run records no chance level (manifest info `chance`), so no chance line is drawn.")
        with st.expander("Table"):
            st.dataframe(d, hide_index=True, width="stretch")

st.subheader("Restart ablation and patching")
if not rd.has(ABLATIONS):
    st.info(f"No ablation results in this run ({ABLATIONS}); run the restart ablation / KV patching on it.")
else:
    with state.shown_errors():
        ab = state.ablations(*state.key(rd))
        c1, c2, c3 = st.columns(3)
        metric = state.sticky(c1.selectbox, "Metric", sorted(ab["metric"].unique().tolist()), key="abl_metric")
        a = pick(c2, "Model", ab, "model", "abl_model")
        a = pick(c3, "Checkpoint", a, "checkpoint", "abl_ckpt")
        if "head" in a.columns and (a["head"] == -1).any():
            a = a[a["head"] == -1]
        st.plotly_chart(charts.ablation_figure(a, metric), key="ablations", width="stretch")
        with st.expander("Table"):
            st.dataframe(a, hide_index=True, width="stretch")
