"""Figures: the regenerated paper figures of the run (figures/*.png, *.html, *.csv, *.md)."""

import base64
import io
from pathlib import Path

import pandas as pd
import streamlit as st

from memento_lens.app import state

MAX_INLINE_HTML = 1_500_000

st.title("Figures")
rd = state.run_or_stop()
with state.shown_errors():
    figs = rd.figures()
    if not figs:
        st.info(f"{rd.path}: no figures yet (figures/ is empty); regenerate them with the analyses "
                "(see `memento-lens --help`).")
        st.stop()
    names = sorted(figs)
    chosen = st.multiselect("Figures", names, default=names, key="fig_names")
    for name in chosen:
        st.subheader(name)
        for rel in sorted(figs[name], key=lambda r: [".png", ".html", ".md", ".csv"].index(Path(r).suffix)
                          if Path(r).suffix in (".png", ".html", ".md", ".csv") else 9):
            suffix = Path(rel).suffix
            data = state.file_bytes(*state.key(rd), rel)
            if suffix == ".png":
                st.image(data, caption=rel)
            elif suffix == ".html":
                with st.expander(f"{rel} (interactive)", expanded=".png" not in {Path(r).suffix for r in figs[name]}):
                    if len(data) <= MAX_INLINE_HTML:
                        # data: URL -> opaque origin: the figure's scripts cannot reach the app
                        st.iframe("data:text/html;base64," + base64.b64encode(data).decode(), height=480)
                    else:
                        st.caption(f"{rel} is {len(data) / 1e6:.1f} MB, too large to embed; download it and "
                                   "open it in your browser.")
                    st.download_button("Download HTML", data, file_name=Path(rel).name, key=f"dlh::{rel}")
            elif suffix == ".md":
                st.markdown(data.decode("utf-8", "replace"))
            elif suffix == ".csv":
                with st.expander(f"{rel} (data)"):
                    st.dataframe(pd.read_csv(io.BytesIO(data)), hide_index=True)
                    st.download_button("Download CSV", data, file_name=Path(rel).name, key=f"dl::{rel}")
