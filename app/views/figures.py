"""Figures: the regenerated paper figures of the run (figures/*.png, *.html, *.csv, *.md).

PNG and Markdown are shown; an HTML figure is embedded (from a data: URL, so its scripts cannot reach the
app) only when it is small, else offered as a download read on click; CSV data is shown on request.
"""

import base64
import io
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st
from memento_lens.app import state

MAX_INLINE_HTML = 1_500_000
ORDER = (".png", ".md", ".html", ".csv")

st.title("Figures")
rd = state.run_or_stop()


with state.shown_errors():
    figs = rd.figures()
    loose = rd.unrecorded_figures()
    loose_rels = {r for rels in loose.values() for r in rels}
    if loose:
        st.warning(
            f"{rd.path / 'figures'}: {len(loose_rels)} file(s) are not recorded in manifest.json (written "
            "around the run store, or dropped from the manifest by a later write), so their checksums "
            "cannot be verified; they are shown as found."
        )
        for name, rels in loose.items():
            figs.setdefault(name, []).extend(rels)

    def read(rel: str) -> bytes:
        if rel in loose_rels:
            return state.unrecorded_bytes(*state.key(rd), rel)
        return state.file_bytes(*state.key(rd), rel)

    if not figs:
        st.info(
            f"{rd.path}: no figures yet (figures/ is empty); render them with `memento-lens figures --run {rd.path}`."
        )
        st.stop()
    names = sorted(figs)
    chosen = st.multiselect("Figures", names, default=names, key="fig_names")
    sizes = {
        rel: (rd.path / rel).stat().st_size if rel in loose_rels else rd.store.manifest.files[rel]["bytes"]
        for name in names
        for rel in figs[name]
    }
    for name in chosen:
        st.subheader(name)
        rels = sorted(figs[name], key=lambda r: ORDER.index(Path(r).suffix) if Path(r).suffix in ORDER else 9)
        suffixes = {Path(r).suffix for r in rels}
        for rel in rels:
            suffix = Path(rel).suffix
            if suffix == ".png":
                st.image(read(rel), caption=rel)
            elif suffix == ".md":
                with st.expander(f"{rel} (table)", expanded=".png" not in suffixes):
                    st.markdown(read(rel).decode("utf-8", "replace"))
            elif suffix == ".html":
                if sizes[rel] <= MAX_INLINE_HTML:
                    with st.expander(f"{rel} (interactive)", expanded=".png" not in suffixes):
                        st.iframe("data:text/html;base64," + base64.b64encode(read(rel)).decode(), height=480)
                st.download_button(
                    f"Download {Path(rel).name} (interactive, {sizes[rel] / 1e6:.1f} MB)",
                    partial(read, rel),
                    file_name=Path(rel).name,
                    mime="text/html",
                    key=f"dlh::{rel}",
                )
            elif suffix == ".csv":
                if st.toggle(f"Show {Path(rel).name} (data)", key=f"csv::{rel}"):
                    st.dataframe(pd.read_csv(io.BytesIO(read(rel))), hide_index=True)
