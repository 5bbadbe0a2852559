"""Streamlit glue: which runs the user named, the shared run/trace pickers, cached reads, error display.

Every cached function is keyed on the run path, the manifest fingerprint (sha256 of manifest.json,
which holds every file's checksum) and every other input, so a re-written run is never served stale.
All reads go through :mod:`memento_lens.app.data`.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from memento_lens.analyses import residue
from memento_lens.runtime.rundir.store import RunError

from .data import ENV_RUNS, KVKey, RunData, RunRef, discover_runs, manifest_fingerprint

MAIN_SCRIPT = Path(__file__).with_name("main.py")


# -- which runs -----------------------------------------------------------------------------------
def named_run_dirs() -> list[str]:
    """Run directories the user named: session override (tests), ``streamlit run main.py -- DIR...``, or
    the ``MEMENTO_LENS_RUNS`` environment variable (what ``memento-lens app`` sets)."""
    if "run_dirs" in st.session_state:
        return [str(p) for p in st.session_state["run_dirs"]]
    argv0 = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if argv0 == MAIN_SCRIPT.resolve():
        args = [a for a in sys.argv[1:] if not a.startswith("-")]
        if args:
            return args
    env = os.environ.get(ENV_RUNS, "")
    return [p for p in env.split(os.pathsep) if p]


@st.cache_data(show_spinner=False, ttl=5)
def _discover(paths: tuple[str, ...]) -> list[RunRef]:
    return discover_runs(paths)


def run_refs() -> list[RunRef]:
    return _discover(tuple(named_run_dirs()))


# -- cached reads (keyed on path + manifest fingerprint + inputs) ----------------------------------
@st.cache_resource(show_spinner=False, max_entries=32)
def _run(path: str, fingerprint: str) -> RunData:
    rd = RunData(path)
    if rd.fingerprint != fingerprint:  # rewritten between the two reads: the next rerun picks it up
        raise RunError(f"{path}: the run changed while it was being opened; reload the page")
    return rd


def open_run(path: str) -> RunData:
    return _run(path, manifest_fingerprint(path))


def _rd(path: str, fp: str) -> RunData:
    return _run(path, fp)


@st.cache_data(show_spinner=False, max_entries=64)
def summary(path: str, fp: str):
    return _rd(path, fp).summary()


@st.cache_data(show_spinner=False, max_entries=16)
def traces(path: str, fp: str) -> pd.DataFrame:
    return _rd(path, fp).traces()


@st.cache_data(show_spinner=False, max_entries=16)
def trace_labels(path: str, fp: str) -> dict[str, str]:
    """Picker label per trace: id, length, blocks, mode (built once per run, not per option per rerun)."""
    tr = _rd(path, fp).traces()
    return {
        str(t): f"{t}  ({int(n)} tok, {int(b)} blocks, {m})"
        for t, n, b, m in zip(tr["trace"], tr["n_tokens"], tr["n_blocks"], tr["mode"])
    }


@st.cache_data(show_spinner=False, max_entries=256)
def tokens(path: str, fp: str, trace: str) -> pd.DataFrame:
    return _rd(path, fp).tokens(trace)


@st.cache_data(show_spinner=False, max_entries=256)
def events(path: str, fp: str, trace: str) -> pd.DataFrame:
    return _rd(path, fp).events(trace)


@st.cache_data(show_spinner=False, max_entries=256)
def occupancy(path: str, fp: str, trace: str) -> pd.DataFrame:
    return _rd(path, fp).occupancy(trace)


@st.cache_data(show_spinner=False, max_entries=256)
def kv_index(path: str, fp: str, trace: str) -> pd.DataFrame:
    return _rd(path, fp).kv_index(trace)


@st.cache_data(show_spinner=False, max_entries=16)
def residue_traces(path: str, fp: str) -> list[str]:
    return _rd(path, fp).residue_traces()


@st.cache_data(show_spinner=False, max_entries=16)
def attention_traces(path: str, fp: str) -> list[str]:
    return _rd(path, fp).attention_traces()


@st.cache_data(show_spinner=False, max_entries=256)
def attention_index(path: str, fp: str, trace: str) -> pd.DataFrame:
    return _rd(path, fp).attention_index(trace)


@st.cache_data(show_spinner=False, max_entries=512)
def attention(path: str, fp: str, trace: str, variant: str, layer: int, query_pos: int) -> np.ndarray | None:
    return _rd(path, fp).attention(trace, variant, layer, query_pos)


@st.cache_data(show_spinner=False, max_entries=64)
def attention_pattern(
    path: str,
    fp: str,
    trace: str,
    variant: str,
    layer: int,
    q_edges: tuple[int, ...],
    k_edges: tuple[int, ...],
    max_queries: int | None = None,
):
    """Query x key pattern (all heads) of one captured layer on the given edges; every input is in the key."""
    return _rd(path, fp).attention_pattern(trace, variant, layer, q_edges, k_edges, max_queries)


@st.cache_data(show_spinner=False, max_entries=64)
def head_summary(
    path: str, fp: str, trace: str, variant: str, queries: tuple[int, int], max_queries: int | None = None
) -> pd.DataFrame:
    return _rd(path, fp).head_summary(trace, variant, queries, max_queries)


@st.cache_data(show_spinner=False, max_entries=256)
def residue_table(path: str, fp: str, trace: str, which: str) -> pd.DataFrame:
    """Per (block, layer, head): relative L2 and cosine between normal and restart memento K (or V)."""
    return residue.run_residue_table(_rd(path, fp), trace, which)


@st.cache_data(show_spinner=False, max_entries=256)
def residue_positions(
    path: str, fp: str, trace: str, which: str, block: int, layer: int, head: int
) -> tuple[list[int], np.ndarray]:
    rd = _rd(path, fp)
    idx = rd.kv_index(trace)
    normal = rd.kv(KVKey(trace, layer, "normal", block), idx)
    restart = rd.kv(KVKey(trace, layer, "restart", block), idx)
    return residue.residue_positions(normal, restart, which, head)


@st.cache_data(show_spinner=False, max_entries=16)
def probe_results(path: str, fp: str) -> pd.DataFrame:
    return _rd(path, fp).probe_results()


@st.cache_data(show_spinner=False, max_entries=16)
def ablations(path: str, fp: str) -> pd.DataFrame:
    return _rd(path, fp).ablations()


@st.cache_data(show_spinner=False, max_entries=64)
def json_file(path: str, fp: str, rel: str) -> Any:
    return _rd(path, fp).store.read_json(rel)


@st.cache_data(show_spinner=False, max_entries=64)
def file_bytes(path: str, fp: str, rel: str) -> bytes:
    return _rd(path, fp).read_bytes(rel)


def unrecorded_bytes(path: str, fp: str, rel: str) -> bytes:
    """Not cached: an unrecorded file has no checksum in the fingerprint, so it may change under us."""
    return _rd(path, fp).read_unrecorded(rel)


# -- errors ---------------------------------------------------------------------------------------
@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a run problem as ``st.error`` (one line naming the file), never a traceback."""
    try:
        yield
    except RunError as exc:
        st.error(str(exc))
    except Exception as exc:  # a foreign or damaged file we did not anticipate: still no traceback
        st.error(f"Could not show this page for the selected run: {type(exc).__name__}: {exc}")


# -- pickers --------------------------------------------------------------------------------------
def sticky(
    widget: Callable[..., Any], label: str, options: Sequence[Any], key: str, default: Any = None, **kw: Any
) -> Any:
    """A selectbox-like widget whose choice survives page switches (kept under ``_keep_<key>``).

    Streamlit forgets a widget's state when another page is shown; the choice is copied to a plain
    session key by the widget's ``on_change`` callback and restored before the widget is built.
    """
    options = list(options)
    keep = f"_keep_{key}"
    if keep in st.session_state and st.session_state[keep] in options:
        st.session_state[key] = st.session_state[keep]
    elif key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]
    if key not in st.session_state and default in options:
        st.session_state[key] = default

    def remember() -> None:
        st.session_state[keep] = st.session_state[key]

    value = widget(label, options, key=key, on_change=remember, **kw)
    st.session_state[keep] = value
    return value


def run_or_stop() -> RunData:
    """The run picked in the sidebar (among those the user named); shows st.error and stops otherwise."""
    refs = run_refs()
    for r in refs:
        if r.error:
            st.sidebar.warning(r.error)
    good = [r.path for r in refs if not r.error]
    if not good:
        if refs:
            st.error("None of the named directories is a memento-lens run: " + "; ".join(r.error or "" for r in refs))
        else:
            st.error(
                "No run directory given. Start the app with `memento-lens app RUN_DIR [RUN_DIR ...]` "
                "(or `memento-lens demo` to create runs/demo first)."
            )
        st.stop()
    path = sticky(
        st.sidebar.selectbox,
        "Run",
        good,
        key="run",
        format_func=lambda p: Path(p).name or p,
        help="Only the run directories named on the command line are listed.",
    )
    try:
        rd = open_run(path)
    except RunError as exc:
        st.error(str(exc))
        st.stop()
    msg = rd.incomplete_message()
    if msg:
        st.error(msg)
    return rd


def trace_or_stop(rd: RunData, only: Sequence[str] | None = None) -> str:
    if rd.complete and not rd.has("traces.parquet"):
        st.info(
            f"{rd.path}: this {rd.store.manifest.kind} run holds no traces (no traces.parquet); this page "
            "needs a run written by `memento-lens replay`, `generate` or `ingest`."
        )
        st.stop()
    try:
        tr = traces(str(rd.path), rd.fingerprint)
    except RunError as exc:
        st.error(str(exc))
        st.stop()
    names = tr["trace"].astype(str).tolist()
    if only is not None:
        allowed = set(only)
        names = [t for t in names if t in allowed]
    if not names:
        st.error(f"{rd.path}: no traces" + (" with the data this page needs" if only is not None else ""))
        st.stop()
    try:
        labels = trace_labels(str(rd.path), rd.fingerprint)
    except (KeyError, TypeError, ValueError):  # odd trace table: plain ids still work
        labels = {}
    return sticky(st.sidebar.selectbox, "Trace", names, key="trace", format_func=lambda t: labels.get(t, t))


def key(rd: RunData) -> tuple[str, str]:
    """The (path, fingerprint) pair every cached read takes first."""
    return str(rd.path), rd.fingerprint
