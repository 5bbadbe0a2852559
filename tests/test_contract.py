"""The run-directory contract across every seam (issue 11): what each producer writes, every consumer reads.

Producers through the CLI, as a user runs them: ``generate`` and ``replay`` on the shipped toy model (tiny),
``ingest`` of the shared Memento traces, ``probe passcode --quick``, ``ablate restart``, ``figures``. Then
every result is opened through the one reader (:class:`RunReader`: every recorded file verified, every run
table checked against its schema, per-trace reads equal to the whole table filtered, every captured K/V and
attention tensor found by key with its documented shape), every app page is rendered on every run
(streamlit AppTest), and every figure is rendered from the runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from memento_lens.runtime.capture import expand_attention
from memento_lens.runtime.masks import events_from_table, visible_at
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.kv import KVKey
from memento_lens.runtime.rundir.reader import RunReader
from typer.testing import CliRunner

from memento_lens.cli import app

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/ (CI)
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED = sorted(str(p) for p in DATA.glob("*.json"))
MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
PAGES = ["runs", "trace", "attention", "residue", "probes", "figures"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED, reason="shared example traces not present"),
]


def cli(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"memento-lens {' '.join(map(str, args))}\n{res.output}"
    return res.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("contract")
    out = {k: base / k for k in ("generate", "replay", "ingest", "probe", "ablate")}
    cli("generate", "--model", "toy", "--max-new-tokens", 80, "--capture", "--evicted-block",
        "--attention-layers", 0, "--threads", 1, "--out", out["generate"])  # fmt: skip
    cli("replay", "--traces", out["generate"], "--model", "toy", "--allow-truncated", "--evicted-block",
        "--attention-layers", 0, "--threads", 1, "--out", out["replay"])  # fmt: skip
    cli("ingest", *SHARED, "--out", out["ingest"])
    cli("probe", "passcode", "--quick", "--samples", 400, "--out", out["probe"])
    cli("ablate", "restart", "--samples", 24, "--no-generated", "--out", out["ablate"])
    # the figures of all runs, recorded in the ingest run's figures/ (the app's figures page shows them)
    runs_args = [a for k in ("generate", "ingest", "probe", "ablate") for a in ("--run", out[k])]
    cli("figures", *runs_args, "--out", out["ingest"] / "figures", "--no-png")
    return out


def test_every_result_opens_through_the_one_reader(runs):
    for name, path in runs.items():
        run = RunReader(path, require_complete=True)
        for rel in run.files():
            run.verify(rel)  # inside the run, present, checksum intact
        present = [t for t in schema.TABLES.values() if run.has(t)]
        assert present, name
        for t in present:
            df = run.table(t)
            assert set(t.required) <= set(df.columns), (name, t.name)
            if "trace" in df.columns and len(df):
                one = df["trace"].iloc[0]
                part = run.table(t, trace=one)
                assert len(part) == int((df["trace"] == one).sum()) > 0, (name, t.name)
        if name in ("generate", "replay", "ingest"):
            assert all(run.has(t) for t in schema.TRACE_TABLES), name
        expected = {"probe": schema.PROBE_RESULTS, "ablate": schema.ABLATIONS}.get(name)
        if expected is not None:
            assert len(run.table(expected)) > 0


@pytest.mark.parametrize("name", ["generate", "replay"])
def test_captured_kv_and_attention_by_key(runs, name):
    run = RunReader(runs[name])
    idx = run.kv_index()
    assert set(idx["variant"]) == {"normal", "restart", "evicted_block"}
    for r in idx.itertuples(index=False):
        entry = run.kv(KVKey(r.trace, int(r.layer), r.variant, int(r.block)))
        assert entry.keys.shape == entry.values.shape
        assert entry.keys.shape[0] == 1 and entry.keys.shape[2] == r.end - r.start
    n_tokens = dict(zip(*[run.table(schema.TRACES)[c] for c in ("trace", "n_tokens")]))
    att = run.attention_index()
    events = run.table(schema.EVENTS)
    assert len(att)
    for r in att.head(20).itertuples(index=False):
        w = run.attention(r.trace, r.variant, int(r.layer), int(r.query_pos))  # compact: the visible keys
        vis = visible_at(events_from_table(events, trace=r.trace), int(r.query_pos), n_tokens[r.trace])
        assert w.shape[0] == 1 and expand_attention(w, vis).shape[-1] == n_tokens[r.trace]


def test_generate_and_replay_agree_on_the_same_trace(runs):
    """The replay of a generated trace rebuilds the identical cache: same tokens, roles, events, K/V."""
    import torch

    gen, rep = RunReader(runs["generate"]), RunReader(runs["replay"])
    cols = ["trace", "pos", "token_id", "role", "block"]
    assert gen.table(schema.TOKENS)[cols].equals(rep.table(schema.TOKENS)[cols])
    keys = [KVKey(r.trace, int(r.layer), r.variant, int(r.block)) for r in gen.kv_index().itertuples(index=False)]
    a, b = gen.kv_many(keys), rep.kv_many(keys)
    assert a.keys() == b.keys() and keys
    for k in keys:
        assert torch.allclose(a[k].keys, b[k].keys, atol=1e-5), k


def test_every_app_page_renders_on_every_run(runs):
    pytest.importorskip("streamlit")
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    for name, path in runs.items():
        for page in PAGES:
            st.cache_data.clear()
            st.cache_resource.clear()
            at = AppTest.from_file(MAIN, default_timeout=120)
            at.session_state["run_dirs"] = [str(path)]
            at.run()
            at.switch_page(f"views/{page}.py")
            at.run()
            assert not at.exception, (name, page, [e.value for e in at.exception])
            # a page that needs what this run does not hold says so in one line naming the file
            for err in at.error:
                assert "\n" not in err.value.strip() and str(path) in err.value, (name, page, err.value)


def test_every_figure_renders_from_the_runs(runs, tmp_path):
    from memento_lens.analyses.figures import REGISTRY, render_figures

    report = render_figures(
        ["all"], runs=[runs[k] for k in ("generate", "ingest", "probe", "ablate")], out_dir=tmp_path, png=False
    )
    assert {r.name for r in report.rendered} == set(REGISTRY), report.skipped
    recorded = RunReader(runs["ingest"]).files(schema.FIGURES_DIR)
    assert {Path(r).stem for r in recorded} >= set(REGISTRY)  # the CLI's figures were recorded in the run
