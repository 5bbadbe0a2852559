"""Every app page under streamlit's AppTest on a small fixture run: main chart present, no exception, chart
data equal to the run's files; broken runs (missing, incomplete, corrupt) give st.error, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from memento_lens.analyses.residue import residue  # noqa: E402
from memento_lens.app.fixtures import FixtureSpec, write_fixture_run  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
PAGES = ["runs", "trace", "attention", "residue", "probes", "figures"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_fixture_run(tmp_path_factory.mktemp("app") / "fixture", FixtureSpec(n_traces=3, attention_traces=2))


@pytest.fixture(autouse=True)
def _fresh_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    yield


def page(name: str, run_dirs: list, **state) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["run_dirs"] = [str(p) for p in run_dirs]
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(f"views/{name}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def arr(v) -> list:
    """A plotly spec array as a list (plotly encodes numpy arrays as {dtype, bdata[, shape]})."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(x) for x in str(v["shape"]).split(",")])
        return a.tolist()
    return list(v)


def traces_named(spec: dict, name: str) -> list[dict]:
    return [t for t in spec["data"] if t.get("name") == name]


def test_runs_page_lists_the_run_and_its_sizes(run_dir):
    at = page("runs", [run_dir])
    assert not at.error
    df = at.dataframe[0].value
    row = df.iloc[0]
    assert row["status"] == "complete" and row["traces"] == 3 and row["model"] == "fixture-tiny"
    assert row["masking"] == "memento, keep 0, delimiters kept"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    kv_mb = sum(f["bytes"] for r, f in manifest["files"].items() if r.startswith("kv/")) / 1e6
    (sizes,) = charts(at)
    assert arr(traces_named(sizes, "kv")[0]["y"])[0] == pytest.approx(kv_mb)


def test_trace_page_occupancy_equals_the_run_and_slider_greys_evicted(run_dir):
    at = page("trace", [run_dir])
    assert not at.error
    strip, occ = charts(at)
    table = pd.read_parquet(run_dir / "occupancy.parquet")
    mem = table[(table.trace == "t0000") & (table["mode"] == "memento")].sort_values("step")
    line = traces_named(occ, "memento")[0]
    assert arr(line["y"]) == mem["tokens"].tolist()
    assert traces_named(occ, "vanilla"), "vanilla overlay missing"
    # at the last step every eviction has fired: the strip's 'evicted' cells are exactly the evicted ranges
    ev = pd.read_parquet(run_dir / "events.parquet").query("trace == 't0000'")
    expected = sorted(p for s, e in zip(ev.start, ev.end) for p in range(s, e))
    assert sorted(arr(traces_named(strip, "evicted")[0]["x"])) == expected
    # move the step before the first eviction: nothing is greyed
    at.slider[0].set_value(int(ev.position.min()) - 1).run()
    strip, occ = charts(at)
    assert not traces_named(strip, "evicted")
    assert occ["layout"]["shapes"][0]["x0"] == int(ev.position.min()) - 1


def titled(at: AppTest, prefix: str) -> dict:
    found = [c for c in charts(at) if str(c["layout"].get("title", {}).get("text", "")).startswith(prefix)]
    assert found, f"no chart titled {prefix!r}"
    return found[0]


def nan_grid(v) -> np.ndarray:
    """A plotly heatmap z (bdata or nested lists with null for NaN) as a float array."""
    return np.array([[np.nan if x is None else x for x in row] for row in arr(v)], dtype=float)


def captured_rows(run_dir: Path, trace: str, variant: str, layer: int) -> dict[int, np.ndarray]:
    """The stored attention rows straight from the shards (no app code): ``{query: [heads, n_keys]}``."""
    idx = pd.read_parquet(run_dir / "attention/index.parquet")
    sel = idx[(idx.trace == trace) & (idx.variant == variant) & (idx.layer == layer)]
    return {int(r.query_pos): load_file(str(run_dir / r.shard))[r.tensor][0].float().numpy() for r in sel.itertuples()}


def visible_rows(run_dir: Path, trace: str, n: int) -> dict[int, np.ndarray]:
    """Visibility straight from events.parquet (causal minus every range from the step its event hides it)."""
    ev = pd.read_parquet(run_dir / "events.parquet").query("trace == @trace")
    out = {}
    for q in range(n):
        v = np.arange(n) <= q
        for r in ev.itertuples():
            start_from = r.rewind_to if "rewind_to" in ev and pd.notna(r.rewind_to) else r.position
            if r.end > r.start and q >= start_from:
                v[r.start : r.end] = False
        out[q] = v
    return out


def test_attention_heatmap_equals_the_captured_weights(run_dir):
    at = page("attention", [run_dir])
    assert not at.error
    n = len(pd.read_parquet(run_dir / "tokens.parquet").query("trace == 't0000'"))
    vis = visible_rows(run_dir, "t0000", n)
    for variant in ("normal", "restart"):
        heat = titled(at, f"{variant}: captured queries")["data"][0]
        assert heat["type"] == "heatmap"
        z = nan_grid(heat["z"])
        rows = captured_rows(run_dir, "t0000", variant, 0)
        assert z.shape == (len(rows), max(rows) + 1)  # one row per captured query, keys 0..last query
        for i, q in enumerate(sorted(rows)):
            w = rows[q].mean(0)  # the page defaults to the mean over heads
            v = vis[q][: z.shape[1]]
            np.testing.assert_allclose(z[i, v], w[: z.shape[1]][v], rtol=1e-6, atol=1e-7)
            assert np.isnan(z[i, ~v]).all()  # not visible: blank, never a zero weight
    # a single head
    at.selectbox(key="att_head").set_value(1).run()
    z = nan_grid(titled(at, "normal: captured queries")["data"][0]["z"])
    rows = captured_rows(run_dir, "t0000", "normal", 0)
    q = sorted(rows)[-1]
    np.testing.assert_allclose(z[-1, vis[q]], rows[q][1][vis[q]], rtol=1e-6, atol=1e-7)


def test_attention_heatmap_shades_each_eviction_from_the_step_it_hides(run_dir):
    at = page("attention", [run_dir])
    from memento_lens.app.compute import EVICTED_TINT

    spec = titled(at, "normal: captured queries")
    shades = [s for s in spec["layout"].get("shapes", []) if s.get("fillcolor") == EVICTED_TINT]
    ev = pd.read_parquet(run_dir / "events.parquet").query("trace == 't0000' and end > start")
    queries = sorted(captured_rows(run_dir, "t0000", "normal", 0))
    expected = {
        (s - 0.5, e - 0.5, float(np.searchsorted(queries, p)) - 0.5)
        for s, e, p in zip(ev.start, ev.end, ev.position)
        if p <= queries[-1]
    }
    assert {(sh["x0"], sh["x1"], sh["y0"]) for sh in shades} == expected and expected
    # evicted spans are never drawn in the prompt's grey
    from memento_lens.analyses.palette import ROLE_COLORS

    assert EVICTED_TINT != ROLE_COLORS["prompt"] and all(sh["line"]["color"] != ROLE_COLORS["prompt"] for sh in shades)


def test_attention_page_difference_and_one_query_follow_the_picker(run_dir):
    at = page("attention", [run_dir])
    diff = nan_grid(titled(at, "normal − restart")["data"][0]["z"])
    normal = nan_grid(titled(at, "normal: captured queries")["data"][0]["z"])
    restart = nan_grid(titled(at, "restart: captured queries")["data"][0]["z"])
    np.testing.assert_allclose(diff, normal - restart, rtol=1e-5, atol=1e-6)
    rows = captured_rows(run_dir, "t0000", "normal", 0)
    first = sorted(rows)[0]
    at.selectbox(key="att_query::t0000").set_value(first).run()
    assert not at.exception
    bars = titled(at, f"Attention of query {first}")
    shown = {}
    for t in bars["data"]:
        if t["type"] == "bar" and t.get("xaxis", "x") == "x":
            shown.update(zip(arr(t["x"]), arr(t["y"])))
    w = rows[first].mean(0)
    assert shown and all(y == pytest.approx(float(w[p]), abs=1e-6) for p, y in shown.items())
    # the heatmaps mark the picked query's row
    lines = [s for s in titled(at, "normal: captured queries")["layout"]["shapes"] if s.get("type") == "line"]
    assert any(s["y0"] == 0.0 for s in lines)
    mass = titled(at, "Attention mass by role")
    normal_bars = traces_named(mass, "normal")[0]
    assert sum(arr(normal_bars["y"])) == pytest.approx(float(w.sum()), abs=1e-5)
    from memento_lens.analyses.palette import MASS_COLORS

    assert arr(normal_bars["marker"]["color"]) == [MASS_COLORS[c] for c in arr(normal_bars["x"])]  # by role


def test_attention_head_overview_sorted_by_the_chosen_mass(run_dir):
    at = page("attention", [run_dir])
    at.selectbox(key="att_grid_sort").set_value("prompt").run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert list(table["prompt"]) == sorted(table["prompt"], reverse=True)
    grid = titled(at, "Heads sorted by attention mass on prompt")
    tiles = [a["text"] for a in grid["layout"]["annotations"] if " prompt " in a["text"]]
    assert len(tiles) == len(table) == 2 * 4  # 2 layers x 4 heads, one tile each, in the table's order
    assert tiles == [f"L{r.layer}·H{r.head} prompt {r.prompt:.2f}" for r in table.itertuples()]


def test_residue_heatmap_equals_metric_on_the_shards(run_dir):
    at = page("residue", [run_dir])
    assert not at.error
    heat = charts(at)[0]["data"][0]
    assert heat["type"] == "heatmap"
    idx = pd.read_parquet(run_dir / "kv/index.parquet").query("trace == 't0000' and block == 0 and layer == 1")
    tensors = {}
    for r in idx.itertuples():
        tensors[r.variant] = load_file(str(run_dir / r.shard))[r.key]
    res = residue(tensors["normal"], tensors["restart"])
    col = arr(heat["x"]).index("L1·H0")
    assert arr(heat["z"])[0][col] == pytest.approx(float(res.rel_l2[0]), rel=1e-6)
    # click through: pick memento 2, its tokens are shown
    at.selectbox(key="res_block").set_value(2).run()
    assert not at.exception
    tok = pd.read_parquet(run_dir / "tokens.parquet").query("trace == 't0000' and block == 2 and role == 'memento'")
    shown = " ".join(h.proto.body for h in at.get("html"))
    assert all(f">{t}</span>" in shown for t in tok.token)
    # cosine metric re-renders the heatmap with cosine values
    at.radio(key="res_metric").set_value("cosine").run()
    heat = charts(at)[0]["data"][0]
    assert arr(heat["z"])[0][col] == pytest.approx(float(res.cosine[0]), rel=1e-6)


def test_probes_page_accuracy_ci_and_chance(run_dir):
    at = page("probes", [run_dir])
    assert not at.error
    probes, abl = charts(at)
    table = pd.read_parquet(run_dir / "probe_results.parquet")
    direct = [t for t in traces_named(probes, "direct") if t.get("mode") == "lines+markers"][0]
    # defaults: x = layer, the last checkpoint in training order ("final" after "step-500")
    sel = table[(table.checkpoint == "final") & (table.condition == "direct")]
    assert arr(direct["y"]) == pytest.approx(sel.sort_values("layer").accuracy.tolist())
    masked = [t for t in traces_named(probes, "masked") if t.get("mode") == "lines+markers"][0]
    sel = table[(table.checkpoint == "final") & (table.condition == "masked") & (table.distance == 1)]
    assert arr(masked["y"]) == pytest.approx(sel.sort_values("layer").accuracy.tolist())
    assert probes["layout"]["shapes"][0]["y0"] == pytest.approx(0.1)  # chance from the manifest
    at.radio(key="probe_x").set_value("distance").run()
    assert not at.exception
    probes, _ = charts(at)
    assert probes["layout"]["xaxis"]["title"]["text"] == "distance"
    masked = [t for t in traces_named(probes, "masked") if t.get("mode") == "lines+markers"][0]
    assert arr(masked["x"]) == [1, 2, 3]  # at the last layer, where every distance was probed
    ab = pd.read_parquet(run_dir / "ablations.parquet").query("experiment == 'restart' and layer >= 0")
    line = [t for t in abl["data"] if t.get("name") == "restart / restart"][0]
    assert arr(line["y"]) == pytest.approx(ab.sort_values("layer").value.tolist())


def test_figures_page_shows_each_figure(run_dir):
    at = page("figures", [run_dir])
    assert not at.error
    pngs = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert len(at.get("image")) == len(pngs) == 2
    assert [s.value for s in at.subheader] == sorted({p.stem for p in (run_dir / "figures").iterdir()})
    assert len(at.get("iframe")) == 1  # the html figure, embedded from a data: URL


# -- broken runs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PAGES)
def test_missing_run_dir_shows_error(name, tmp_path):
    at = page(name, [tmp_path / "nope"])
    assert at.error and "no such run directory" in " ".join(e.value for e in at.error) + " ".join(
        w.value for w in at.sidebar.warning
    )


@pytest.mark.parametrize("name", PAGES)
def test_no_run_named_shows_how_to_start(name, monkeypatch):
    monkeypatch.delenv("MEMENTO_LENS_RUNS", raising=False)
    at = page(name, [])
    assert at.error and "memento-lens app RUN_DIR" in at.error[0].value


@pytest.fixture(scope="module")
def incomplete_run(tmp_path_factory) -> Path:
    return write_fixture_run(
        tmp_path_factory.mktemp("inc") / "run",
        FixtureSpec(n_traces=2, probes=False, ablations=False, figures=False, complete=False),
    )


@pytest.mark.parametrize("name", PAGES)
def test_incomplete_run_shows_error(name, incomplete_run):
    at = page(name, [incomplete_run])
    assert at.error and any("incomplete" in e.value for e in at.error)


def test_interrupted_capture_shows_its_committed_parts(tmp_path):
    run = write_fixture_run(
        tmp_path / "partial",
        FixtureSpec(n_traces=2, complete=False, as_parts=True, probes=False, ablations=False, figures=False),
    )
    assert not (run / "tokens.parquet").exists() and (run / "parts/00000/tokens.parquet").exists()
    at = page("trace", [run])
    assert any("incomplete" in e.value for e in at.error)
    occ = pd.read_parquet(run / "parts/00000/occupancy.parquet").query("trace == 't0000' and mode == 'memento'")
    assert arr(traces_named(charts(at)[1], "memento")[0]["y"]) == occ.sort_values("step").tokens.tolist()
    at = page("runs", [run])
    assert at.dataframe[0].value.iloc[0]["traces"] == 2
    at = page("residue", [run])
    assert charts(at) and charts(at)[0]["data"][0]["type"] == "heatmap"


@pytest.fixture
def broken_copy(run_dir, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(run_dir, dst)
    return dst


@pytest.mark.parametrize("name", ["trace", "attention", "residue"])
def test_corrupt_tokens_file_names_it(name, broken_copy):
    f = broken_copy / "tokens.parquet"
    f.write_bytes(f.read_bytes()[:100])
    at = page(name, [broken_copy])
    assert at.error and any("tokens.parquet" in e.value and "checksum" in e.value for e in at.error)


def test_corrupt_kv_shard_on_residue_page(broken_copy):
    shard = broken_copy / "kv/shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10:] = b"\x00" * 10
    shard.write_bytes(bytes(data))
    at = page("residue", [broken_copy])
    assert at.error and any("shard-00000.safetensors" in e.value for e in at.error)


@pytest.mark.parametrize("name", PAGES)
def test_garbage_manifest_shows_error(name, broken_copy):
    (broken_copy / "manifest.json").write_text("{not json")
    at = page(name, [broken_copy])
    assert at.error and any("manifest.json" in e.value for e in at.error)


def test_missing_table_in_complete_run_names_it(broken_copy):
    m = json.loads((broken_copy / "manifest.json").read_text())
    del m["files"]["events.parquet"]
    (broken_copy / "manifest.json").write_text(json.dumps(m))
    at = page("trace", [broken_copy])
    assert at.error and any("events.parquet" in e.value for e in at.error)


def test_run_without_attention_says_how_to_capture(tmp_path):
    run = write_fixture_run(tmp_path / "noatt", FixtureSpec(n_traces=1, attention_traces=0))
    at = page("attention", [run])
    assert not at.error and "--attention-layers" in at.info[0].value


def test_rewritten_run_is_not_served_from_a_stale_cache(tmp_path):
    run = write_fixture_run(tmp_path / "r", FixtureSpec(n_traces=1, seed=1))
    at = page("trace", [run])
    first = arr(traces_named(charts(at)[1], "memento")[0]["y"])
    write_fixture_run(run, FixtureSpec(n_traces=1, seed=2, block_len=(20, 30)))  # same path, new content
    at = page("trace", [run])
    second = arr(traces_named(charts(at)[1], "memento")[0]["y"])
    assert list(second) != list(first)
    occ = pd.read_parquet(run / "occupancy.parquet").query("mode == 'memento'").sort_values("step")
    assert list(second) == occ.tokens.tolist()


def test_selected_trace_survives_page_switch(run_dir):
    at = page("trace", [run_dir])
    at.sidebar.selectbox(key="trace").set_value("t0001").run()
    at.switch_page("views/residue.py").run()
    assert not at.exception
    assert at.sidebar.selectbox(key="trace").value == "t0001"


def test_only_named_runs_are_listed(run_dir, tmp_path):
    other = write_fixture_run(tmp_path / "other", FixtureSpec(n_traces=1))
    at = page("runs", [tmp_path])  # a folder of runs: the runs directly inside it
    assert at.dataframe[0].value["run"].tolist() == [str(other.resolve())]
    assert not np.isin([str(run_dir)], at.dataframe[0].value["run"]).any()


def test_vanilla_overlay_derived_when_only_memento_occupancy_recorded(broken_copy):
    from memento_lens.runtime.rundir.store import RunStore

    store = RunStore.open(broken_copy)
    occ = pd.read_parquet(broken_copy / "occupancy.parquet")
    store.write_table("occupancy.parquet", occ[occ["mode"] == "memento"])
    at = page("trace", [broken_copy])
    assert not at.error
    van = traces_named(charts(at)[1], "vanilla")[0]
    n = int((occ.trace == "t0000").sum() / 2)
    assert arr(van["y"]) == list(range(1, n + 1))
    assert any("vanilla line is what full attention would hold" in c.value for c in at.caption)


def test_figures_not_in_the_manifest_are_shown_with_a_warning(broken_copy):
    m = json.loads((broken_copy / "manifest.json").read_text())
    m["files"] = {r: f for r, f in m["files"].items() if not r.startswith("figures/")}
    (broken_copy / "manifest.json").write_text(json.dumps(m))
    at = page("figures", [broken_copy])
    assert not at.error and "not recorded in manifest.json" in at.warning[0].value
    assert len(at.get("image")) == 2


def test_attention_page_on_a_real_compact_capture(tmp_path):
    """A replay through the runtime's own capture (float16, visible keys only): the heatmap equals the stored
    weights decoded over the visible keys; only one world was captured, and the page says so."""
    import random

    from conftest import TOKENS, tiny_qwen3
    from memento_lens.runtime.capture import AttentionWeights
    from memento_lens.runtime.config import BlockMaskingConfig
    from memento_lens.runtime.masks import visibility_mask
    from memento_lens.runtime.runs import replay_to_run
    from memento_lens.runtime.schedule import compute_schedule
    from memento_lens.runtime.trace import Trace
    from memento_lens.runtime.verify import structured_stream

    ids, pl = structured_stream(random.Random(5), TOKENS, list(range(5, 48)), n_blocks=3)
    cfg = BlockMaskingConfig(mask_delimiters=True)
    run = tmp_path / "real"
    replay_to_run(tiny_qwen3(), [Trace("t0", ids, pl)], cfg, TOKENS, run, captures=[AttentionWeights(layers=(0, 1))])
    at = page("attention", [run])
    assert not at.error
    assert any("Only the normal variant was captured" in i.value for i in at.info)
    at.selectbox(key="att_layer").set_value(1).run()
    z = nan_grid(titled(at, "normal: captured queries")["data"][0]["z"])
    mask = visibility_mask(compute_schedule(ids, cfg, TOKENS, prompt_len=pl)).numpy()
    rows = captured_rows(run, "t0", "normal", 1)
    assert z.shape == (len(ids), len(ids)) and len(rows) == len(ids)
    for q, stored in rows.items():
        assert stored.shape == (4, int(mask[q].sum()))  # compact: the visible keys only
        np.testing.assert_allclose(z[q, mask[q]], stored.mean(0), rtol=1e-6, atol=1e-7)
        assert np.isnan(z[q, ~mask[q]]).all()


def test_attention_normal_vs_restart_across_two_real_runs(tmp_path):
    """A memento-mode replay (normal) and a restart-mode replay (restart) of the same trace, opened together:
    the page puts the other run's world beside this one and draws their difference, hidden where either hides."""
    import random

    from conftest import TOKENS, tiny_qwen3
    from memento_lens.runtime.capture import AttentionWeights
    from memento_lens.runtime.config import BlockMaskingConfig
    from memento_lens.runtime.runs import replay_to_run
    from memento_lens.runtime.trace import Trace
    from memento_lens.runtime.verify import structured_stream

    ids, pl = structured_stream(random.Random(7), TOKENS, list(range(5, 48)), n_blocks=3)
    model = tiny_qwen3()
    runs = {}
    for name, restart in (("normal", False), ("restart", True)):
        cfg = BlockMaskingConfig(mask_delimiters=True, restart_mode=restart)
        runs[name] = tmp_path / name
        replay_to_run(model, [Trace("t0", ids, pl)], cfg, TOKENS, runs[name], captures=[AttentionWeights(layers=(0,))])
    at = page("attention", [runs["normal"], runs["restart"]])
    assert not at.error and not any("Only the normal variant" in i.value for i in at.info)
    normal = nan_grid(titled(at, "normal: captured queries")["data"][0]["z"])
    restart = nan_grid(titled(at, "restart (restart): captured queries")["data"][0]["z"])
    diff = nan_grid(titled(at, "normal − restart")["data"][0]["z"])
    both = ~np.isnan(normal) & ~np.isnan(restart)
    np.testing.assert_allclose(diff[both], (normal - restart)[both], atol=1e-6)
    assert np.isnan(diff[~both]).all()
    # the restart world hides each block from its memento's <|summary_start|> on: more hidden cells
    assert np.isnan(restart).sum() > np.isnan(normal).sum()
