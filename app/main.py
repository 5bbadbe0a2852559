"""memento-lens app entry script: `memento-lens app RUN_DIR ...` runs `streamlit run` on this file.

Pages live in ``views/`` (not ``pages/``, which streamlit would also serve as stand-alone pages); they
read runs only through :mod:`memento_lens.app.state` (cached) and :mod:`memento_lens.app.data`.
"""

import streamlit as st

st.set_page_config(page_title="memento-lens", page_icon=":material/search:", layout="wide")

# The default page is served at "/"; its url_path must still be unique, so "/runs" is a hidden alias that
# switches to it (a default page's own url_path is not served by that name).
RUNS = st.Page("views/runs.py", title="Runs", icon=":material/folder_open:", url_path="runs-list", default=True)


def _runs_alias() -> None:
    st.switch_page(RUNS)


PAGES = [
    RUNS,
    st.Page("views/trace.py", title="Trace explorer", icon=":material/text_snippet:", url_path="trace"),
    st.Page("views/attention.py", title="Attention", icon=":material/center_focus_strong:", url_path="attention"),
    st.Page("views/residue.py", title="Erased-block residue", icon=":material/grid_on:", url_path="residue"),
    st.Page("views/probes.py", title="Probes and ablations", icon=":material/monitoring:", url_path="probes"),
    st.Page("views/figures.py", title="Figures", icon=":material/image:", url_path="figures"),
    st.Page(_runs_alias, title="Runs", url_path="runs", visibility="hidden"),
]

st.navigation(PAGES).run()
