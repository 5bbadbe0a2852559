"""App responsiveness: seconds per interaction (streamlit AppTest script runs) on a large generated run
(1,000 traces, ~120 MB of captured KV) against a small one, on this machine.

Each interaction is one script run as a user click causes it: first open of a page (cold caches), moving
the step slider, picking another trace (uncached reads of that trace), switching layer / head / metric.
Target: every interaction on the large run under 2 s; ratios large/small show how cost grows with size.
Attention at scale: the Attention page on one ~4K-token trace with every query of 2 layers captured (9 heads,
normal and restart, stored as the capture stores it), and what that capture costs on disk.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from .common import BenchRow

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
TARGET_S = 2.0


def _run_dir(spec, name: str) -> Path:
    """Generate the fixture run once per spec (kept in the temp dir between benchmark invocations)."""
    from dataclasses import asdict

    from memento_lens.app.fixtures import write_fixture_run

    root = Path(tempfile.gettempdir()) / "memento-lens-bench-app"
    path, stamp = root / name, root / f"{name}.spec.json"
    want = json.dumps(asdict(spec), sort_keys=True)
    manifest = path / "manifest.json"
    fresh = (
        manifest.exists()
        and json.loads(manifest.read_text()).get("status") == "complete"
        and stamp.exists()
        and stamp.read_text() == want
    )
    if not fresh:
        write_fixture_run(path, spec, overwrite=True)
        stamp.write_text(want)
    return path


def _timed(at, fn=None) -> float:
    t0 = time.perf_counter()
    (fn(at) if fn else at).run()
    dt = time.perf_counter() - t0
    assert not at.exception, [e.value for e in at.exception]
    return dt


def interactions(run: Path, traces: list[str]) -> dict[str, float]:
    """Seconds for each scripted interaction on ``run`` (caches cleared first)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    out: dict[str, float] = {}

    def app(page: str) -> AppTest:
        at = AppTest.from_file(MAIN, default_timeout=120)
        at.session_state["run_dirs"] = [str(run)]
        at.run()
        at.switch_page(f"views/{page}.py")
        return at

    at = app("runs")
    out["runs: open (cold)"] = _timed(at)
    at = app("trace")
    out["trace: open (cold)"] = _timed(at)
    n = at.slider[0].max
    out["trace: move step slider"] = _timed(at, lambda a: a.slider[0].set_value(n // 2))
    out["trace: pick another trace"] = _timed(at, lambda a: a.sidebar.selectbox(key="trace").set_value(traces[-1]))
    out["trace: occupancy in bytes"] = _timed(at, lambda a: a.radio(key="occ_unit").set_value("bytes"))
    at.switch_page("views/attention.py")
    out["attention: open"] = _timed(at)
    out["attention: change layer"] = _timed(at, lambda a: a.selectbox(key="att_layer").set_value(1))
    out["attention: change head"] = _timed(at, lambda a: a.selectbox(key="att_head").set_value(0))
    at.switch_page("views/residue.py")
    out["residue: open (KV of a new trace)"] = _timed(at)
    out["residue: cosine"] = _timed(at, lambda a: a.radio(key="res_metric").set_value("cosine"))
    out["residue: values"] = _timed(at, lambda a: a.radio(key="res_which").set_value("values"))
    out["residue: pick memento"] = _timed(at, lambda a: a.selectbox(key="res_block").set_value(2))
    at.switch_page("views/probes.py")
    out["probes: open"] = _timed(at)
    out["probes: x = distance"] = _timed(at, lambda a: a.radio(key="probe_x").set_value("distance"))
    at.switch_page("views/figures.py")
    out["figures: open"] = _timed(at)
    return out


def attention_4k(run_dir: Path) -> dict[str, float]:
    """Seconds per Attention-page interaction on a ~4K-token trace with every query of 2 layers captured
    (normal and restart, compact float16), caches cleared first."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["run_dirs"] = [str(run_dir)]
    at.run()
    at.switch_page("views/attention.py")
    out = {"open (whole trace, binned; cold)": _timed(at)}
    out["change head"] = _timed(at, lambda a: a.selectbox(key="att_head").set_value(3))
    lo, hi = at.slider(key="att_window::t0000").min, at.slider(key="att_window::t0000").max
    mid = int((lo + hi) // 2)
    out["pick a 128-token window (token by token)"] = _timed(
        at, lambda a: a.slider(key="att_window::t0000").set_value((mid, mid + 127))
    )
    out["open a query row"] = _timed(at, lambda a: a.selectbox(key="att_query::t0000").set_value(mid + 64))
    out["change layer (cold)"] = _timed(at, lambda a: a.selectbox(key="att_layer").set_value(1))
    out["sort heads by delimiters"] = _timed(at, lambda a: a.selectbox(key="att_grid_sort").set_value("delimiters"))
    return out


def attention_4k_rows(repeats: int) -> list[BenchRow]:
    import os

    from memento_lens.app.fixtures import attention_4k_spec
    from memento_lens.runtime.rundir import TRACES, RunReader

    spec = attention_4k_spec()
    run_dir = _run_dir(spec, "attention-4k")
    n_tokens = int(RunReader(run_dir).table(TRACES)["n_tokens"].iloc[0])
    att_bytes = sum(p.stat().st_size for p in (run_dir / "attention").glob("*.safetensors"))
    per_layer_1k = att_bytes / (spec.n_layers * 2) / (n_tokens / 1000)  # 2 variants
    runs = [attention_4k(run_dir) for _ in range(repeats)]
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    load = os.getloadavg()[0]
    rows = [
        BenchRow(
            benchmark=f"app attention 4K: {name}",
            metric="seconds",
            value=round(v, 3),
            target=f"< {TARGET_S:g} s",
            passed=v < TARGET_S,
            note=f"best of {repeats}, slowest {max(r[name] for r in runs):.3f} s; one {n_tokens}-token trace, every "
            f"query of 2 layers x 9 heads captured (normal + restart, float16 visible keys, {att_bytes / 1e6:.0f} MB); "
            f"load average {load:.1f}",
        )
        for name, v in best.items()
    ]
    rows.append(
        BenchRow(
            benchmark="attention capture size (all queries, float16, visible keys)",
            metric="MB per layer per 1K tokens",
            value=round(per_layer_1k / 1e6, 2),
            note=f"9 heads, {n_tokens}-token memento trace (36 blocks; mean visible keys per query "
            f"{per_layer_1k / 1000 / 9 / 2:.0f}); float32 over every position would be "
            f"{9 * 4 * n_tokens * 1000 / 1e6:.1f} MB (the layout before compact storage)",
        )
    )
    return rows


def run(quick: bool = False) -> list[BenchRow]:
    from memento_lens.app.fixtures import FixtureSpec, large_spec

    small_spec = FixtureSpec(
        n_traces=3,
        n_blocks=7,
        block_len=(10, 20),
        memento_len=(3, 6),
        n_layers=4,
        kv_heads=2,
        d_head=8,
        attention_traces=1,
    )
    big = large_spec()
    if quick:  # a tenth of the large run: same shapes, 100 traces (~12 MB of KV)
        from dataclasses import replace

        big = replace(big, n_traces=100, attention_traces=5)
    small = _run_dir(small_spec, "small")
    large = _run_dir(big, "large" if not quick else "large-quick")
    kv_mb = sum(p.stat().st_size for p in (large / "kv").glob("*.safetensors")) / 1e6

    from memento_lens.runtime.rundir import TRACES, RunReader

    def trace_names(run: Path) -> list[str]:
        return RunReader(run).table(TRACES, columns=["trace"])["trace"].tolist()

    interactions(small, trace_names(small))  # warm the imports once, so neither side pays them
    repeats = 1 if quick else 3  # best of N whole sequences (caches cleared each time)
    runs_small = [interactions(small, trace_names(small)) for _ in range(repeats)]
    runs_large = [interactions(large, trace_names(large)) for _ in range(repeats)]
    t_small = {k: min(r[k] for r in runs_small) for k in runs_small[0]}
    t_large = {k: min(r[k] for r in runs_large) for k in runs_large[0]}
    slowest = {k: max(r[k] for r in runs_large) for k in runs_large[0]}
    rows = []
    for name, s in t_large.items():
        rows.append(
            BenchRow(
                benchmark=f"app {name}",
                metric="seconds (large run)",
                value=round(s, 3),
                target=f"< {TARGET_S:g} s",
                passed=s < TARGET_S,
                note=f"best of {repeats}, slowest {slowest[name]:.3f} s; small run {t_small[name]:.3f} s; "
                f"ratio {s / max(t_small[name], 1e-9):.2f}x; {big.n_traces} traces, "
                f"{kv_mb:.0f} MB KV",
            )
        )
    worst = max(t_large.values())
    rows.append(
        BenchRow(
            benchmark="app worst interaction",
            metric="seconds (large run)",
            value=round(worst, 3),
            target=f"< {TARGET_S:g} s",
            passed=worst < TARGET_S,
            note=f"{max(t_large, key=t_large.get)}; slowest single sample {max(slowest.values()):.3f} s; "
            f"small-run worst {max(t_small.values()):.3f} s; {big.n_traces} traces, "
            f"{kv_mb:.0f} MB KV",
        )
    )
    rows += attention_4k_rows(1 if quick else 2)
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r.benchmark:42s} {r.value:6.3f} s  {'ok' if r.passed else 'SLOW'}  {r.note}")
