"""Probes and ablations: probe accuracy by layer / distance / checkpoint with CIs and the chance line;
restart-ablation and patching curves."""

import streamlit as st
from memento_lens.analyses.figures.base import PASSCODE_CHANCE, checkpoint_order, normalize_models
from memento_lens.app import charts, compute, state
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
    st.info(f"No probe results in this run ({PROBES}); run `memento-lens probe passcode` to write them.")
else:
    with state.shown_errors():
        df = normalize_models(state.probe_results(*state.key(rd)))
        xs = [x for x in ("layer", "distance", "checkpoint") if x in df.columns and df[x].nunique() > 1]
        x = st.radio("x axis", xs or ["layer"], horizontal=True, key="probe_x")
        cols = st.columns(5)
        d = pick(cols[0], "Model", df, "model", "probe_model")
        d = pick(cols[1], "Probe", d, "probe", "probe_kind")
        checkpoints = checkpoint_order(d["checkpoint"]) if "checkpoint" in d.columns else []
        ck = None
        if x != "checkpoint" and checkpoints:
            ck = (
                state.sticky(cols[2].selectbox, "Checkpoint", checkpoints, key="probe_ckpt", default=checkpoints[-1])
                if len(checkpoints) > 1
                else checkpoints[0]
            )
        dist = lay = None
        multi = (
            [g["distance"].unique() for _, g in d.groupby("condition") if g["distance"].nunique() > 1]
            if "distance" in d.columns
            else []
        )
        if x != "distance" and multi:
            opts = sorted({int(v) for arr in multi for v in arr})
            dist = state.sticky(
                cols[3].selectbox,
                "Masked distance",
                opts,
                key="probe_dist",
                default=compute.nearest_distance(opts),
                help="Blocks between the probed block and the memento (masked condition)",
            )
        if x != "layer":
            opts = sorted(int(v) for v in d["layer"].unique())
            lay = state.sticky(cols[4].selectbox, "Layer", opts, key="probe_layer", default=opts[-1])
        sel = compute.probe_selection(d, x, distance=dist, layer=lay, checkpoint=ck)
        if x == "checkpoint":
            order = {c: i for i, c in enumerate(checkpoints)}
            sel = sel.assign(_o=sel["checkpoint"].astype(str).map(order)).sort_values("_o").drop(columns="_o")
        chance = rd.chance()
        if chance is None and "chance" in sel.columns:
            chance = float(sel["chance"].mean())
        if chance is None and set(sel["condition"]) & {"direct", "masked", "causal_control"}:
            chance = PASSCODE_CHANCE  # one of 10 digits per passcode position
        st.plotly_chart(charts.probe_figure(sel, x, chance), key="probes", width="stretch")
        if chance is None:
            st.caption("This run records no chance level, so no chance line is drawn.")
        with st.expander("Table"):
            st.dataframe(sel, hide_index=True, width="stretch")

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
