"""Trace explorer: the token stream by role, each memento beside its block, a generation-step slider
that greys out what has been evicted at that step, and the linked KV-occupancy sawtooth."""

import streamlit as st
from memento_lens.analyses.attention import evicted_at_step, visible_at_step
from memento_lens.analyses.kv import with_vanilla_overlay
from memento_lens.app import charts, compute, state

st.title("Trace explorer")
rd = state.run_or_stop()
trace = state.trace_or_stop(rd)
with state.shown_errors():
    toks = state.tokens(*state.key(rd), trace)
    ev = state.events(*state.key(rd), trace)
    n = len(toks)
    step_key = f"step::{trace}"
    if step_key not in st.session_state:
        st.session_state[step_key] = n - 1

    def jump(chart_key: str):
        """Clicking a position on a chart moves the step slider there (the charts are linked)."""

        def cb() -> None:
            s = compute.step_from_selection(st.session_state.get(chart_key), n)
            if s is not None:
                st.session_state[step_key] = s

        return cb

    step = st.slider(
        "Generation step (position of the token being processed)",
        0,
        n - 1,
        key=step_key,
        help="A block evicted by an event at position p is gone for every step ≥ p. Clicking a "
        "position on the charts below moves the step there.",
    )
    gone = evicted_at_step(n, ev["start"], ev["end"], ev["position"], step)
    fired = ev[(ev["position"] <= step) & (ev["end"] > ev["start"])]
    c1, c2, c3 = st.columns(3)
    held = visible_at_step(n, ev["start"], ev["end"], ev["position"], step)
    c1.metric("Tokens in cache at this step", int(held.sum()))
    c2.metric("Evicted so far", int(gone.sum()), help=f"{len(fired)} eviction event(s) fired")
    c3.metric("Tokens generated", max(0, step + 1 - int(toks["role"].eq("prompt").sum())))

    st.plotly_chart(
        charts.token_strip_figure(toks, gone, step),
        key=f"strip::{trace}",
        width="stretch",
        on_select=jump(f"strip::{trace}"),
        selection_mode="points",
    )
    if rd.has("occupancy.parquet"):
        recorded = state.occupancy(*state.key(rd), trace)
        occ = with_vanilla_overlay(recorded)
        unit = st.radio("Occupancy unit", ["tokens", "bytes"], horizontal=True, key="occ_unit")
        st.plotly_chart(
            charts.occupancy_figure(occ, step, ev, unit=unit),
            key=f"occupancy::{trace}",
            width="stretch",
            on_select=jump(f"occupancy::{trace}"),
            selection_mode="points",
        )
        if len(occ) != len(recorded):
            st.caption(
                "The run records only the evicting mode; the vanilla line is what full attention would "
                "hold (every token, at the run's own bytes per token)."
            )
    else:
        st.error(f"{rd.path / 'occupancy.parquet'}: missing; this run has no KV occupancy table")
    st.subheader("Token stream")
    st.caption(
        "Prompt, then each block with its memento beside it, then the answer, as decoded text (a hairline marks "
        "each token boundary). Struck-through tokens in the evicted colour are evicted at the selected step; "
        "faded ones come after it."
    )
    st.html(charts.token_stream_html(toks, gone, step))
