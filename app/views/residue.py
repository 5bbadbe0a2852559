"""Erased-block residue: per memento, per layer and head, how far the normal KV is from the restart KV."""

import streamlit as st
from memento_lens.app import charts, compute, state
from memento_lens.app.data import KV_INDEX

st.title("Erased-block residue")
st.caption(
    "How much of an erased block survives in its memento's KV: the memento's K/V computed with the "
    "block visible (normal) against the same tokens recomputed without it (restart)."
)
rd = state.run_or_stop()
if not rd.has(KV_INDEX):
    st.info(
        f"{rd.path}: no captured KV ({KV_INDEX} missing). Capture memento K/V (normal and restart) with "
        "`memento-lens replay --traces RUN_DIR --out NEW_RUN` (add `--evicted-block` for the erased blocks)."
    )
    st.stop()
with state.shown_errors():
    paired = state.residue_traces(*state.key(rd))
    if not paired:
        st.info(
            f"{rd.path}: no memento was captured in both the normal and the restart variant, so there is no "
            "residue to show (a block needs its complete memento; capture with counterfactual restart KV)."
        )
        st.stop()
    trace = state.trace_or_stop(rd, only=paired)
    c1, c2 = st.columns(2)
    which = c1.radio("Tensor", ["keys", "values"], horizontal=True, key="res_which")
    metric = c2.radio(
        "Metric",
        ["rel_l2", "cosine"],
        horizontal=True,
        key="res_metric",
        format_func=lambda m: {"rel_l2": "relative L2", "cosine": "cosine"}[m],
    )
    table = state.residue_table(*state.key(rd), trace, which)
    if table.empty:
        st.error(f"{rd.path / KV_INDEX}: trace {trace!r} has no memento with both normal and restart KV")
        st.stop()
    st.plotly_chart(charts.residue_heatmap(table, metric), key="residue", width="stretch")

    st.subheader("Click through to the tokens")
    toks = state.tokens(*state.key(rd), trace)
    blocks = sorted(table["block"].unique().tolist())
    b = state.sticky(st.selectbox, "Memento", blocks, key="res_block", format_func=lambda x: f"memento {x}")
    sub = table[table["block"] == b]
    worst = sub.sort_values("rel_l2", ascending=False).iloc[0]
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox(
        "Layer",
        sorted(sub["layer"].unique().tolist()),
        index=None,
        key="res_layer",
        placeholder=f"layer {int(worst['layer'])} (largest residue)",
    )
    layer = int(worst["layer"]) if layer is None else int(layer)
    head = c2.selectbox(
        "Head",
        sorted(sub["head"].unique().tolist()),
        index=None,
        key="res_head",
        placeholder=f"head {int(worst['head'])} (largest residue)",
    )
    head = int(worst["head"]) if head is None else int(head)
    cell = sub[(sub["layer"] == layer) & (sub["head"] == head)].iloc[0]
    c3.metric("relative L2 / cosine", f"{cell['rel_l2']:.3f} / {cell['cosine']:.3f}")
    blk = toks[(toks["block"] == b)]
    body, memento = blk[blk["role"] == "block"], blk[blk["role"] == "memento"]
    st.markdown(f"**Erased block {b}:**")
    st.html(charts.tokens_inline_html(body["text"], body["role"], body["pos"]))
    st.markdown("**Its memento:**")
    st.html(charts.tokens_inline_html(memento["text"], memento["role"], memento["pos"]))
    pos, vals = state.residue_positions(*state.key(rd), trace, which, int(b), layer, head)
    tokstr = toks.set_index("pos")["text"].astype(str)
    st.plotly_chart(
        charts.residue_positions_figure(
            [f"{p}:{compute.token_label(tokstr.get(p, '?'), 20)}" for p in pos],
            vals,
            f"Residue per memento token (layer {layer}, head {head}, {which})",
        ),
        key="residue_pos",
        width="stretch",
    )
    with st.expander("Table"):
        st.dataframe(table, hide_index=True, width="stretch")
