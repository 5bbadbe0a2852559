"""Attention: query x key patterns per layer and head (or the mean over heads) over the whole captured trace or
a window of it, evictions shaded from the step they stop being visible; normal vs restart and their
difference; a head overview sorted by where each head's attention goes; one query's attention by position
and its mass by role."""

from pathlib import Path

import numpy as np
import streamlit as st
from memento_lens.analyses.attention import (
    MASS_CATEGORIES,
    attention_mass_by_role,
    edges,
    evicted_spans,
    pattern_difference,
    query_edges,
)
from memento_lens.app import charts, compute, state
from memento_lens.app.data import ATTENTION_INDEX, manifest_fingerprint
from memento_lens.runtime.masks import events_from_table, visible_at
from memento_lens.runtime.rundir.store import RunError

TOKEN_CELLS = 128  # windows up to this many positions per axis are drawn token by token; wider ones in bins
GRID_CELLS = 32  # cells per axis of each small pattern in the head overview
BINNED_QUERIES = 1024  # a binned heatmap averages at most this many of the window's queries (evenly spaced)
GRID_QUERIES = 512  # the head overview averages at most this many of the window's queries (evenly spaced)

st.title("Attention")
rd = state.run_or_stop()
if not rd.has(ATTENTION_INDEX):
    st.info(
        f"{rd.path}: no attention captured (no {ATTENTION_INDEX}). Attention weights are an optional "
        "capture; replay the traces with it, e.g. `memento-lens replay --traces RUN_DIR --attention-layers "
        "0,1 --out NEW_RUN` (every query; add `--attention-queries 20,60,100` for a few), or `--toy N` for toy "
        "sequences."
    )
    st.stop()
with state.shown_errors():
    key = state.key(rd)
    with_att = state.attention_traces(*key)
    trace = state.trace_or_stop(rd, only=with_att)
    idx = state.attention_index(*key, trace)
    toks = state.tokens(*key, trace)
    ev = state.events(*key, trace)
    events = events_from_table(ev)
    n = len(toks)
    roles = toks["role"].astype(str).to_numpy()
    blocks = toks["block"].to_numpy()
    texts = toks["text"].astype(str).to_numpy()
    queries = sorted(int(q) for q in idx["query_pos"].unique())
    layers = sorted(int(x) for x in idx["layer"].unique())
    variants = [v for v in ("normal", "restart") if v in set(idx["variant"])] or sorted(idx["variant"].unique())

    def qlabel(p: int) -> str:
        return f"{p}: {compute.token_label(texts[p], 24)} ({roles[p]})" if 0 <= p < n else str(p)

    # -- controls ---------------------------------------------------------------------------------------
    c1, c2, c3 = st.columns(3)
    layer = state.sticky(c1.selectbox, "Layer", layers, key="att_layer")
    probe = state.attention(*key, trace, variants[0], layer, queries[-1])
    n_heads = probe.shape[0] if probe is not None else 1
    head = state.sticky(
        c2.selectbox,
        "Head",
        ["mean"] + list(range(n_heads)),
        key="att_head",
        format_func=lambda h: "mean over heads" if h == "mean" else f"head {h}",
    )
    scale = c3.radio(
        "Colour scale",
        ["linear", "sqrt"],
        horizontal=True,
        key="att_scale",
        format_func=lambda s: {"linear": "linear", "sqrt": "√ (lifts small weights)"}[s],
    )
    hsel = None if head == "mean" else int(head)
    head_label = "mean over heads" if hsel is None else f"head {hsel}"

    q_first, q_last = queries[0], queries[-1]
    wkey = f"att_window::{trace}"
    if q_last > q_first:
        if wkey not in st.session_state:
            st.session_state[wkey] = (q_first, q_last)
        q_lo, q_last_shown = st.slider(
            "Query window (positions)",
            q_first,
            q_last,
            key=wkey,
            help=f"Windows of up to {TOKEN_CELLS} positions are drawn token by token; wider ones in bins "
            "(each cell: the attention mass of the bin's queries on the bin's keys, averaged over queries).",
        )
    else:
        q_lo, q_last_shown = q_first, q_last
    q_hi = q_last_shown + 1
    kkey = f"att_keys::{trace}::{q_lo}::{q_hi}"
    if kkey not in st.session_state:  # a narrow query window starts token by token on the keys just before it
        narrow = q_hi - q_lo <= TOKEN_CELLS
        st.session_state[kkey] = (max(0, q_hi - TOKEN_CELLS) if narrow else 0, q_hi - 1)
    k_lo, k_last = (
        st.slider(
            "Key window (positions)",
            0,
            q_hi - 1,
            key=kkey,
            help="Widen it to the start (position 0) to see the prompt and every memento, in bins.",
        )
        if q_hi > 1
        else (0, 0)
    )
    k_hi = k_last + 1
    in_window = [q for q in queries if q_lo <= q < q_hi]
    q_edges, by_query = query_edges(in_window, q_lo, q_hi, TOKEN_CELLS)
    k_edges = edges(k_lo, k_hi, TOKEN_CELLS)
    wide = not by_query or len(k_edges) - 1 < k_hi - k_lo
    qe, ke = tuple(int(x) for x in q_edges), tuple(int(x) for x in k_edges)

    # -- the selected query (a click on a row's handle, or the picker below, which stay in sync) --------------
    sel_key = f"att_query::{trace}"
    if st.session_state.get(sel_key) not in queries:
        st.session_state[sel_key] = in_window[-1] if in_window else queries[-1]

    def pick_row(chart_key: str):
        def cb() -> None:
            row = compute.query_from_selection(st.session_state.get(chart_key), len(qe) - 1)
            if row is None:
                return
            later = [q for q in queries if q >= qe[row]]  # a binned row: its first captured query
            st.session_state[sel_key] = st.session_state[f"_keep_{sel_key}"] = later[0] if later else queries[-1]

        return cb

    # -- heatmaps: normal | restart, and their difference -----------------------------------------------------
    spans = evicted_spans(events, k_lo, k_hi, q_lo, q_hi)
    # binned rows average at most BINNED_QUERIES of the window's queries (evenly spaced): an overview that
    # stays interactive on thousands of captured queries; a window of rows one query each uses every query
    sampled = None if by_query else BINNED_QUERIES
    patterns = {v: state.attention_pattern(*key, trace, v, layer, qe, ke, sampled) for v in variants}
    world = {v: v for v in variants}  # panel -> normal / restart
    spans_of = {v: spans for v in variants}
    if len(variants) == 1:  # the other world may be another run of the same trace (a restart-mode replay)
        others = {}
        for ref in state.run_refs():
            if ref.error or Path(ref.path) == Path(rd.path):
                continue
            try:
                okey = (ref.path, manifest_fingerprint(ref.path))
                if not state.open_run(ref.path).has(ATTENTION_INDEX) or trace not in state.attention_traces(*okey):
                    continue
                oidx = state.attention_index(*okey, trace)
                ovars = sorted(set(oidx.loc[oidx["layer"] == layer, "variant"]) - set(variants))
                same = np.array_equal(state.tokens(*okey, trace)["token_id"].to_numpy(), toks["token_id"].to_numpy())
                if ovars and same:
                    others[ref.path] = (okey, ovars[0])
            except RunError:  # an unreadable run is reported on its own pages
                continue
        if others:
            pick = state.sticky(
                st.selectbox,
                f"Compare with the other world (runs holding trace {trace} with other attention, same tokens)",
                ["none", *others],
                key="att_other_run",
                default=next(iter(others)),
                format_func=lambda p: "none" if p == "none" else f"{others[p][1]} from {Path(p).name}",
            )
            if pick != "none":
                okey, ov = others[pick]
                label = f"{ov} ({Path(pick).name})"
                patterns[label] = state.attention_pattern(*okey, trace, ov, layer, qe, ke, sampled)
                world[label] = ov
                spans_of[label] = evicted_spans(events_from_table(state.events(*okey, trace)), k_lo, k_hi, q_lo, q_hi)
    st.subheader(f"Query × key attention — layer {layer}, {head_label}")
    st.caption(
        "Rows are queries, columns keys, decoded tokens coloured by role. Blank cells are positions the query "
        "cannot see; evicted ranges are shaded in the evicted colour from the step they stop being visible "
        "(the runtime's visibility rule), so an evicted key is never drawn as a zero weight. Click a row's "
        "handle (left) to open that query below."
        + (
            " The window is wider than the token view: cells are bins (a cell is the attention mass of its "
            "queries on its keys, averaged over the queries"
            + (
                f"; rows use {BINNED_QUERIES} of the window's {len(in_window)} captured queries, evenly spaced"
                if sampled and len(in_window) > sampled
                else ""
            )
            + "); narrow the windows to see tokens and every query."
            if wide
            else ""
        )
    )
    cols = st.columns(len(patterns)) if len(patterns) > 1 else [st.container()]
    for col, (v, pat) in zip(cols, patterns.items()):
        chart_key = f"qk::{trace}::{v}"
        fig = charts.qk_heatmap(
            pat,
            pat.head(hsel),
            texts,
            roles,
            spans_of[v],
            title=f"{v}: captured queries {q_lo}–{q_hi - 1}",
            sqrt=scale == "sqrt",
            query=st.session_state[sel_key],
            row_handles=in_window,
            rows_are_queries=by_query,
        )
        col.plotly_chart(fig, key=chart_key, on_select=pick_row(chart_key), selection_mode="points", width="stretch")
    by_world = {w: label for label, w in world.items()}
    if {"normal", "restart"} <= set(by_world):
        diff = pattern_difference(patterns[by_world["normal"]], patterns[by_world["restart"]])
        st.plotly_chart(
            charts.qk_heatmap(
                diff,
                diff.head(hsel),
                texts,
                roles,
                spans,
                title="normal − restart (red: the memento-mode world attends more)",
                diverging=True,
                sqrt=scale == "sqrt",
                rows_are_queries=by_query,
            ),
            key=f"qk::{trace}::diff",
            width="stretch",
        )
    else:
        st.info(
            f"Only the {variants[0]} variant was captured for this trace, so there is no normal vs restart "
            "comparison. A restart-mode replay of the same traces captures the other world: `memento-lens replay "
            "--traces RUN --mode restart --attention-layers ... --out RUN_RESTART`, then open both runs "
            "(`memento-lens app RUN RUN_RESTART`) and pick it above."
        )

    # -- one query --------------------------------------------------------------------------------------------
    st.subheader("One query")
    q = state.sticky(
        st.selectbox,
        "Query token",
        queries,
        key=sel_key,
        format_func=qlabel,
        help="Also set by clicking a row handle of the heatmap.",
    )
    rows = {v: state.attention(*key, trace, v, layer, q) for v in variants}
    rows = {v: r for v, r in rows.items() if r is not None} or rows
    picked = {v: (None if r is None else (r.mean(axis=0) if hsel is None else r[hsel])) for v, r in rows.items()}
    visible = visible_at(events, q, n)
    label = f"layer {layer}, {head_label}"
    st.plotly_chart(charts.attention_figure(picked, roles, visible, q, label), key="attention", width="stretch")
    masses = {v: attention_mass_by_role(w, roles, blocks, q, visible) for v, w in picked.items() if w is not None}
    st.plotly_chart(charts.mass_figure(masses), key="mass", width="stretch")
    leak = {v: m["evicted"] + m["future"] for v, m in masses.items() if m["evicted"] + m["future"] > 1e-4}
    if leak:
        st.warning(
            "Attention mass on evicted or future positions (should be 0 — a masking leak?): "
            + ", ".join(f"{v}: {m:.4f}" for v, m in leak.items())
        )

    # -- head overview ----------------------------------------------------------------------------------------
    st.subheader("Head overview")
    hv = state.sticky(st.selectbox, "Variant", variants, key="att_grid_variant") if len(variants) > 1 else variants[0]
    summary = state.head_summary(*key, trace, hv, (q_lo, q_hi), GRID_QUERIES)
    metric = state.sticky(
        st.selectbox,
        "Sort heads by attention mass on",
        [c for c in MASS_CATEGORIES if c != "future"],
        key="att_grid_sort",
        default="mementos",
    )
    ranked = summary.sort_values([metric, "layer", "head"], ascending=[False, True, True]).reset_index(drop=True)
    grid_q = tuple(int(x) for x in query_edges(in_window, q_lo, q_hi, GRID_CELLS)[0])
    grid_k = tuple(int(x) for x in edges(k_lo, k_hi, GRID_CELLS))
    small = {
        li: state.attention_pattern(*key, trace, hv, li, grid_q, grid_k, GRID_QUERIES)
        for li in sorted(ranked["layer"].unique())
    }
    used = min(len(in_window), GRID_QUERIES)
    st.caption(
        f"Every captured head ({len(ranked)}), its pattern over the window in {GRID_CELLS}×{GRID_CELLS} bins, "
        f"sorted by its mean attention mass on {metric} over "
        + (
            f"the window's {used} captured queries."
            if used == len(in_window)
            else f"{used} of the window's {len(in_window)} captured queries (evenly spaced; narrow the window "
            "to use them all)."
        )
    )
    st.plotly_chart(charts.head_grid_figure(small, ranked, metric), key="head_grid", width="stretch")
    with st.expander("Per-head attention mass by role (table)"):
        st.dataframe(ranked, hide_index=True, width="stretch")
    if int(np.sum(summary["n_queries"] == 0)):
        st.caption("Some layers have no captured query in this window.")
