"""Runs: the runs the user named, their model, masking config, sizes and completion state."""

import json

import pandas as pd
import streamlit as st
from memento_lens.app import charts, state
from memento_lens.app.data import manifest_fingerprint
from memento_lens.runtime.rundir.store import RunError

st.title("Runs")
refs = state.run_refs()
if not refs:
    st.error(
        "No run directory given. Start the app with `memento-lens app RUN_DIR [RUN_DIR ...]` "
        "(or `memento-lens demo` to create runs/demo first)."
    )
    st.stop()


def masking_text(m: dict) -> str:
    if not m:
        return "?"
    keep = m.get("keep_last_n_blocks")
    mode = "vanilla" if keep == -1 else ("restart" if m.get("restart_mode") else "memento")
    parts = [mode]
    if keep is not None and keep >= 0:
        parts.append(f"keep {keep}")
    parts.append("delimiters masked" if m.get("mask_delimiters") else "delimiters kept")
    return ", ".join(parts)


rows, problems, sizes = [], [], []
for ref in refs:
    if ref.error:
        problems.append(ref.error)
        continue
    try:
        s = state.summary(ref.path, manifest_fingerprint(ref.path))
    except RunError as exc:
        problems.append(str(exc))
        continue
    rows.append(
        {
            "run": s.path,
            "status": s.status,
            "kind": s.kind,
            "model": s.model,
            "masking": masking_text(s.masking),
            "traces": s.n_traces,
            "tokens": s.n_tokens,
            "size (MB)": round(s.total_bytes / 1e6, 2),
            "KV (MB)": round(s.kv_bytes / 1e6, 2),
            "files": s.n_files,
            "attention": s.has.get("attention"),
            "probes": s.has.get("probes"),
            "ablations": s.has.get("ablations"),
            "figures": s.has.get("figures"),
            "created": s.created,
        }
    )
    for cat, mb in s.category_mb.items():
        sizes.append({"run": s.path.rstrip("/").rsplit("/", 1)[-1], "category": cat, "mb": mb})
for p in problems:
    st.error(p)
if rows:
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        column_config={
            "attention": st.column_config.CheckboxColumn(),
            "probes": st.column_config.CheckboxColumn(),
            "ablations": st.column_config.CheckboxColumn(),
            "figures": st.column_config.CheckboxColumn(),
        },
    )
    st.plotly_chart(
        charts.run_sizes_figure(pd.DataFrame(sizes, columns=["run", "category", "mb"])), key="sizes", width="stretch"
    )
    st.caption("Pick a run in the sidebar to explore it on the other pages.")
    rd = state.run_or_stop()
    with state.shown_errors():
        s = state.summary(*state.key(rd))
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Traces", s.n_traces if s.n_traces is not None else "?")
        c2.metric("Tokens", s.n_tokens if s.n_tokens is not None else "?")
        c3.metric("Captured KV", f"{s.kv_bytes / 1e6:.1f} MB")
        c4.metric("Status", s.status)
        with st.expander("Masking config and manifest info"):
            st.json(
                json.loads(
                    json.dumps(
                        {"masking": s.masking, "config": rd.store.manifest.config, "info": rd.store.manifest.info},
                        default=str,
                    )
                )
            )
        for rel in [r for r in rd.files() if "/" not in r and r.endswith(".json")]:
            with st.expander(f"{rel}"):
                st.json(state.json_file(*state.key(rd), rel), expanded=2)
        if st.button("Verify all checksums", help="sha256 of every file against manifest.json"):
            errors = rd.verify_all()
            if errors:
                for e in errors:
                    st.error(e)
            else:
                st.success(f"All {s.n_files} files match their checksums.")
