"""Probes and ablations: probe accuracy by layer / distance / checkpoint with CIs and the chance line; the channel
decomposition (normal world, restart world, the on-distribution reference worlds, memento text, implicit excess
against each); restart-ablation and patching curves."""

import pandas as pd
import streamlit as st
from memento_lens.analyses.figures.base import PASSCODE_CHANCE, all_head_rows, checkpoint_order, normalize_models
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

DECOMPOSITION = [
    "condition",
    "distance",
    "layer",
    "accuracy",
    "ci_low",
    "ci_high",
    "restart_accuracy",
    "restart_ci_low",
    "restart_ci_high",
    "text_accuracy",
    "text_ceiling",
    "implicit_excess",
    "excess_ci_low",
    "excess_ci_high",
    "same_sum_accuracy",
    "excess_same_sum",
    "excess_same_sum_ci_low",
    "excess_same_sum_ci_high",
    "foreign_accuracy",
    "excess_foreign",
    "excess_foreign_ci_low",
    "excess_foreign_ci_high",
    "delimiter_hidden_accuracy",
    "excess_delimiter_hidden",
    "excess_delimiter_hidden_ci_low",
    "excess_delimiter_hidden_ci_high",
    "check",
    "n_val",
    "n_seeds",
    "n_data_seeds",
    "epochs",
    "best_epoch",
    "stopped_by",
    "still_improving",
    "hit_cap",
]
# the worlds a row can carry: (label, accuracy / CI columns, colour)
WORLD_BARS = (
    ("normal world", ("accuracy", "ci_low", "ci_high"), "#D55E00"),
    ("restart world (text channel)", ("restart_accuracy", "restart_ci_low", "restart_ci_high"), "#CC79A7"),
    ("same-sum block", ("same_sum_accuracy", "same_sum_ci_low", "same_sum_ci_high"), "#332288"),
    ("foreign passcode", ("foreign_accuracy", "foreign_ci_low", "foreign_ci_high"), "#117733"),
    (
        "delimiters hidden",
        ("delimiter_hidden_accuracy", "delimiter_hidden_ci_low", "delimiter_hidden_ci_high"),
        "#882255",
    ),
    ("text-only probe", ("text_accuracy", "text_ci_low", "text_ci_high"), "#7F7F7F"),
)


def decomposition_figure(rows, chance):
    """Grouped bars per condition: normal world, restart world, the reference worlds the run has, text-only probe
    (95% CIs), text ceiling marks."""
    import plotly.graph_objects as go

    rows = rows.sort_values(["condition", "distance"])
    labels = [
        f"{c} +{d}" if c == "masked" else ("causal control (pipeline check)" if c == "causal_control" else c)
        for c, d in zip(rows["condition"], rows["distance"])
    ]
    fig = go.Figure()
    for name, (v, lo, hi), col in WORLD_BARS:
        if v not in rows.columns or rows[v].isna().all():
            continue
        fig.add_trace(
            go.Bar(
                x=labels,
                y=rows[v],
                name=name,
                marker_color=col,
                error_y=dict(type="data", symmetric=False, array=rows[hi] - rows[v], arrayminus=rows[v] - rows[lo]),
            )
        )
    if rows["text_ceiling"].notna().any():
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=rows["text_ceiling"],
                mode="markers",
                name="exact text ceiling",
                marker=dict(symbol="line-ew-open", size=28, color="black", line=dict(width=2)),
            )
        )
    if chance is not None:
        fig.add_hline(y=chance, line=dict(color="#999999", dash="dot"), annotation_text=f"chance {chance:.2f}")
    fig.update_layout(
        barmode="group",
        title="Channel decomposition (implicit excess = normal - restart)",
        yaxis_title="accuracy",
        yaxis_range=[0, 1.02],
        template="plotly_white",
    )
    return fig


st.subheader("Channel decomposition")
if rd.has(PROBES):
    with state.shown_errors():
        df = normalize_models(state.probe_results(*state.key(rd)))
        if "implicit_excess" not in df.columns or df["implicit_excess"].isna().all():
            st.info(
                "This run predates the channel decomposition (no restart-world or text-only probes); rerun "
                "`memento-lens probe passcode` to see how much of the accuracy the memento text alone explains."
            )
        else:
            df = df[df["implicit_excess"].notna()]
            df = all_head_rows(df)
            cols = st.columns(4)
            d = pick(cols[0], "Model", df, "model", "dec_model")
            d = pick(cols[1], "Probe", d, "probe", "dec_probe")
            d = pick(cols[2], "Checkpoint", d, "checkpoint", "dec_ckpt")
            opts = sorted(int(v) for v in d["layer"].unique())
            names = {v: ("all probed layers" if v < 0 else f"layer {v}") for v in opts}  # never a layer index
            lay = state.sticky(
                cols[3].selectbox,
                "Layer",
                opts,
                key="dec_layer",
                default=max(opts),
                format_func=lambda v: names[v],
            )
            rows = d[d["layer"] == lay]
            st.plotly_chart(decomposition_figure(rows, rd.chance() or PASSCODE_CHANCE), key="decomp", width="stretch")
            st.caption(
                "Normal world: memento K/V as cached. Restart world: the same tokens with every memento recomputed "
                "without its block, so only what the memento text says. References on the model's own distribution "
                "(where the run has them): same-sum block (the block swapped for one with the same memento text), "
                "foreign passcode (another passcode in the block), delimiters hidden (the block's kept delimiters "
                "hidden from every later token: a channel that survives it runs through memento K/V). Each excess = "
                "normal - that world, paired 95% CI over validation samples, probe seeds and data seeds. The causal "
                "control checks the pipeline: `check` says whether it stayed at chance (Bonferroni over the rows)."
            )
            if len(rows):
                r0 = rows.iloc[0]
                flags = [f"{int(r0['n_val'])} validation samples" if "n_val" in rows else ""]
                if "n_data_seeds" in rows and not pd.isna(r0["n_data_seeds"]):
                    flags.append(f"{int(r0['n_seeds'])} probe seeds x {int(r0['n_data_seeds'])} data seeds")
                if "stopped_by" in rows and rows["stopped_by"].notna().any():
                    counts = rows["stopped_by"].value_counts().to_dict()
                    flags.append("stopped by " + ", ".join(f"{k} ({v})" for k, v in counts.items()))
                    if rows["still_improving"].fillna(False).any():
                        flags.append(f"{int(rows['still_improving'].fillna(False).sum())} row(s) still improving")
                st.caption(" · ".join(f for f in flags if f))
            st.dataframe(rows[[c for c in DECOMPOSITION if c in rows.columns]], hide_index=True, width="stretch")

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
        a = all_head_rows(a)
        st.plotly_chart(charts.ablation_figure(a, metric), key="ablations", width="stretch")
        with st.expander("Table"):
            st.dataframe(a, hide_index=True, width="stretch")
