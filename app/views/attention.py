"""Attention: one query's attention over the positions visible at its step (evicted ones shown as such),
attention mass by role, normal vs restart side by side."""

import streamlit as st
from memento_lens.analyses.attention import attention_mass_by_role, visible_at_step
from memento_lens.app import charts, state
from memento_lens.app.data import ATTENTION_INDEX

st.title("Attention")
rd = state.run_or_stop()
if not rd.has(ATTENTION_INDEX):
    st.info(
        f"{rd.path}: no attention captured (no {ATTENTION_INDEX}). Attention weights are an optional "
        "capture; replay the traces with it, e.g. `memento-lens replay --traces RUN_DIR --attention-layers "
        "0,1 --attention-queries 20,60,100 --out NEW_RUN` (or `--toy N` for toy sequences)."
    )
    st.stop()
with state.shown_errors():
    with_att = state.attention_traces(*state.key(rd))
    trace = state.trace_or_stop(rd, only=with_att)
    idx = state.attention_index(*state.key(rd), trace)
    toks = state.tokens(*state.key(rd), trace)
    ev = state.events(*state.key(rd), trace)
    roles = toks["role"].astype(str).to_numpy()
    blocks = toks["block"].to_numpy()
    tokstr = toks["token"].astype(str).to_numpy()
    c1, c2, c3 = st.columns(3)
    queries = sorted(int(q) for q in idx["query_pos"].unique())
    # default: the latest captured query (the most evictions behind it)
    q = state.sticky(
        c1.selectbox,
        "Query token",
        queries,
        key="att_query",
        default=queries[-1],
        format_func=lambda p: f"{p}: {tokstr[p]!r} ({roles[p]})" if p < len(tokstr) else str(p),
    )
    layers = sorted(int(x) for x in idx["layer"].unique())
    layer = state.sticky(c2.selectbox, "Layer", layers, key="att_layer")
    variants = [v for v in ("normal", "restart") if v in set(idx["variant"])] or sorted(idx["variant"].unique())
    rows = {v: state.attention(*state.key(rd), trace, v, layer, q) for v in variants}
    rows = {v: r for v, r in rows.items() if r is not None} or rows
    n_heads = max((r.shape[0] for r in rows.values() if r is not None), default=1)
    head = state.sticky(
        c3.selectbox,
        "Head",
        ["mean"] + list(range(n_heads)),
        key="att_head",
        format_func=lambda h: "mean over heads" if h == "mean" else f"head {h}",
    )
    picked = {v: (None if r is None else (r.mean(axis=0) if head == "mean" else r[int(head)])) for v, r in rows.items()}
    visible = visible_at_step(len(toks), ev["start"], ev["end"], ev["position"], q)
    label = f"layer {layer}, " + ("mean over heads" if head == "mean" else f"head {head}")
    st.plotly_chart(charts.attention_figure(picked, roles, visible, q, label), key="attention", width="stretch")
    masses = {v: attention_mass_by_role(w, roles, blocks, q, visible) for v, w in picked.items() if w is not None}
    st.plotly_chart(charts.mass_figure(masses), key="mass", width="stretch")
    leak = {v: m["evicted"] + m["future"] for v, m in masses.items() if m["evicted"] + m["future"] > 1e-4}
    if leak:
        st.warning(
            "Attention mass on evicted or future positions (should be 0 — a masking leak?): "
            + ", ".join(f"{v}: {m:.4f}" for v, m in leak.items())
        )
    if "restart" not in rows:
        st.info("No restart-variant attention was captured for this query, so only the normal variant is shown.")
