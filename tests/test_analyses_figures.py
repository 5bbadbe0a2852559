"""Each figure's CSV equals its inputs; skips, idempotency, run manifests, PNG export (slow, chromium)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from memento_lens.analyses.figures import REGISTRY, chromium_path, render_figures, resolve_names
from memento_lens.analyses.figures.base import checkpoint_order
from memento_lens.analyses.ingest import ingest_files, write_run
from memento_lens.analyses.kv import account_trace, default_configs
from memento_lens.analyses.stats import block_stats
from memento_lens.analyses.tokenization import ApproxTokenizer
from memento_lens.runtime.config import ConfigError
from memento_lens.runtime.rundir.store import RunStore

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLES = [DATA / "memento_example_math.json", DATA / "memento_example_code.json"]
needs_examples = pytest.mark.skipif(not EXAMPLES[0].exists(), reason="shared example traces not present")
LAYERS = range(4)


def probe_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []

    def add(model, checkpoint, cond, dist, layer, seed, head=-1, task=float("nan")):
        acc = float(rng.uniform(0.05, 0.9))
        rows.append(
            {
                "model": model,
                "checkpoint": checkpoint,
                "condition": cond,
                "distance": dist,
                "layer": layer,
                "head": head,
                "probe": "mlp",
                "seed": seed,
                "n_train": 100,
                "n_val": 20,
                "accuracy": acc,
                "ci_low": acc - 0.03,
                "ci_high": acc + 0.04,
                "control_accuracy": 0.1,
                "selectivity": acc - 0.1,
                "task_accuracy": task,
            }
        )

    for seed in (0, 1):
        for layer in LAYERS:
            add("qwen3-8b", "final", "direct", 0, layer, seed)
            add("qwen3-8b", "final", "masked", 1, layer, seed)
            add("qwen3-8b", "final", "masked", 2, layer, seed)
            add("qwen3-8b", "final", "causal_control", -1, layer, seed)
            add("qwen3-8b", "final", "direct", 0, layer, seed, head=1)  # single-head rows: not plotted
    for ck, task in (("step-100", 0.77), ("step-1000", 0.95), ("step-300", 0.85)):
        for layer in LAYERS:
            add("toy", ck, "masked", 1, layer, 0, task=task)
        for dist in (2, 3, 4):
            add("toy", ck, "masked", dist, 3, 0, task=task)
    return pd.DataFrame(rows)


def ablation_rows() -> pd.DataFrame:
    rows = [
        {
            "experiment": "restart",
            "model": "qwen3-8b",
            "checkpoint": "final",
            "variant": v,
            "layer": -1,
            "head": -1,
            "direction": "none",
            "metric": "accuracy",
            "value": val,
            "ci_low": val - 0.05,
            "ci_high": val + 0.05,
            "n": 30,
        }
        for v, val in (("normal", 0.661), ("restart", 0.508))
    ]
    for layer in LAYERS:
        rows.append(
            {
                "experiment": "patch",
                "model": "qwen3-8b",
                "checkpoint": "final",
                "variant": "restart",
                "layer": layer,
                "head": -1,
                "direction": "normal->restart",
                "metric": "nll",
                "value": 1.0 + 0.1 * layer,
                "ci_low": 0.9 + 0.1 * layer,
                "ci_high": 1.1 + 0.1 * layer,
                "n": 30,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def probe_run(tmp_path) -> Path:
    store = RunStore.create(tmp_path / "probes", "probes", {"synthetic": True})
    store.write_table("probe_results.parquet", probe_rows())
    store.write_table("ablations.parquet", ablation_rows())
    store.mark_complete()
    return store.path


def test_names():
    assert resolve_names(["all"]) == list(REGISTRY) and len(REGISTRY) == 5
    with pytest.raises(ConfigError, match="unknown figure"):
        resolve_names(["nope"])
    assert checkpoint_order(["final", "step-300", "step-1000", "step-100"]) == [
        "step-100",
        "step-300",
        "step-1000",
        "final",
    ]


def test_probe_figures_csv_match_inputs(probe_run, tmp_path):
    out = tmp_path / "figs"
    rep = render_figures(
        ["probe-conditions", "toy-leakage", "restart-ablation"], runs=[probe_run], out_dir=out, png=False
    )
    assert rep.skipped == {} and {r.name for r in rep.rendered} == {
        "probe-conditions",
        "toy-leakage",
        "restart-ablation",
    }
    assert rep.png_skipped and "disabled" in rep.png_skipped
    src = probe_rows()

    pc = pd.read_csv(out / "probe-conditions.csv")
    q = pc[pc["model"] == "qwen3-8b"]
    assert set(q["condition"]) == {"direct", "masked", "causal_control"}
    assert (q[q["condition"] == "masked"]["distance"] == 1).all()  # nearest distance only
    for r in q.itertuples():
        want = src[
            (src["model"] == "qwen3-8b")
            & (src["condition"] == r.condition)
            & (src["distance"] == r.distance)
            & (src["layer"] == r.layer)
            & (src["head"] == -1)
        ]
        assert r.n_seeds == 2 == len(want)
        assert r.accuracy == pytest.approx(want["accuracy"].mean(), abs=1e-12)
        assert r.ci_low == pytest.approx(want["ci_low"].mean(), abs=1e-12)
    assert (pc["chance"] == 0.1).all()
    toy = pc[pc["model"] == "toy"]
    assert set(toy["checkpoint"]) == {"step-1000"}  # the last checkpoint
    md = (out / "probe-conditions.md").read_text()
    direct0 = src[
        (src["model"] == "qwen3-8b") & (src["condition"] == "direct") & (src["layer"] == 0) & (src["head"] == -1)
    ]["accuracy"].mean()
    assert "| layer 0 |" in md and f"{direct0 * 100:.4g}" in md

    tl = pd.read_csv(out / "toy-leakage.csv")
    toy_src = src[src["model"] == "toy"]
    by_layer = tl[tl["panel"] == "by_layer"]
    last = toy_src[(toy_src["checkpoint"] == "step-1000") & (toy_src["distance"] == 1)].set_index("layer")
    assert by_layer["x"].tolist() == list(LAYERS)
    assert by_layer["value"].tolist() == pytest.approx(last.loc[list(LAYERS), "accuracy"].tolist())
    by_dist = tl[tl["panel"] == "by_distance"]
    want = toy_src[(toy_src["checkpoint"] == "step-1000") & (toy_src["layer"] == 3)].set_index("distance")
    assert by_dist["x"].tolist() == [1, 2, 3, 4]
    assert by_dist["value"].tolist() == pytest.approx(want.loc[[1, 2, 3, 4], "accuracy"].tolist())
    ck = tl[(tl["panel"] == "by_checkpoint") & (tl["series"] == "masked")]
    assert ck["x_label"].tolist() == ["step-100", "step-300", "step-1000"]
    want = toy_src[(toy_src["layer"] == 3) & (toy_src["distance"] == 1)].set_index("checkpoint")
    assert ck["value"].tolist() == pytest.approx(want.loc[["step-100", "step-300", "step-1000"], "accuracy"].tolist())
    task = tl[tl["series"] == "task_accuracy"]
    assert task["value"].tolist() == pytest.approx([0.77, 0.85, 0.95])

    ra = pd.read_csv(out / "restart-ablation.csv")
    restart = ra[ra["panel"] == "restart"].set_index("variant")
    assert restart.loc["normal", "value"] == pytest.approx(0.661) and restart.loc["restart", "value"] == pytest.approx(
        0.508
    )
    patch = ra[ra["panel"] == "patch"]
    assert patch["layer"].tolist() == list(LAYERS) and patch["value"].tolist() == pytest.approx([1.0, 1.1, 1.2, 1.3])
    md = (out / "restart-ablation.md").read_text()
    assert "| qwen3-8b | final | accuracy | 0.661 | 0.508 | -0.153 |" in md


def test_toy_model_at_checkpoint_names_group_together(tmp_path):
    df = probe_rows()
    toy = df["model"] == "toy"
    df.loc[toy, "model"] = "toy@" + df.loc[toy, "checkpoint"]
    df.loc[toy, "checkpoint"] = ""
    store = RunStore.create(tmp_path / "r", "probes", {})
    store.write_table("probe_results.parquet", df)
    rep = render_figures(["toy-leakage"], runs=[tmp_path / "r"], out_dir=tmp_path / "f", png=False)
    assert not rep.skipped
    tl = pd.read_csv(tmp_path / "f" / "toy-leakage.csv")
    assert set(tl["model"]) == {"toy"} and (tl["panel"] == "by_checkpoint").sum() == 6


@needs_examples
def test_trace_figures_from_files_and_skips(tmp_path):
    out = tmp_path / "figs"
    rep = render_figures(["all"], traces=EXAMPLES, out_dir=out, png=False)
    assert [r.name for r in rep.rendered] == ["kv-sawtooth", "compression-cdf"]
    assert set(rep.skipped) == {"probe-conditions", "toy-leakage", "restart-ablation"}
    assert all("probe" in why for why in rep.skipped.values())
    tok = ApproxTokenizer()
    traces = ingest_files(EXAMPLES, tok).traces
    kv = pd.read_csv(out / "kv-sawtooth.csv")
    curves = account_trace(traces[0], tok.ids, default_configs(), "qwen3-8b")
    for mode in ("vanilla", "memento"):
        got = kv[kv["mode"] == mode]
        want = curves[mode].tokens[traces[0].prompt_len :]
        assert got["tokens"].tolist() == want.tolist()
        assert got["kv_gb"].to_numpy() == pytest.approx(want * 147456 / 2**30)
    md = (out / "kv-sawtooth.md").read_text()
    assert f"{curves['memento'].auc_gb_ktok:.4g}" in md
    cdf = pd.read_csv(out / "compression-cdf.csv")
    bs = block_stats(traces, tok.ids)
    for dom in ("math", "code"):
        got = cdf[cdf["domain"] == dom]
        assert got["ratio"].tolist() == pytest.approx(sorted(bs[bs["domain"] == dom]["ratio_chars"]))
        assert got["cdf"].iloc[-1] == 1.0
    assert len(cdf[cdf["domain"] == "all"]) == len(bs)
    for suffix in ("csv", "md", "html"):
        assert (out / f"kv-sawtooth.{suffix}").stat().st_size > 0
    assert not (out / "kv-sawtooth.png").exists()


@needs_examples
def test_idempotent_and_recorded_in_the_run(tmp_path):
    tok = ApproxTokenizer()
    res = ingest_files(EXAMPLES, tok, keep_text=True)
    write_run(tmp_path / "run", res.traces, tok, spec="qwen3-8b")
    figs = tmp_path / "run" / "figures"
    rep1 = render_figures(["kv-sawtooth", "compression-cdf"], runs=[tmp_path / "run"], out_dir=figs, png=False)
    first = {p.name: p.read_bytes() for p in figs.iterdir()}
    rep2 = render_figures(["kv-sawtooth", "compression-cdf"], runs=[tmp_path / "run"], out_dir=figs, png=False)
    assert {p.name: p.read_bytes() for p in figs.iterdir()} == first
    assert [r.files for r in rep1.rendered] == [r.files for r in rep2.rendered]
    store = RunStore.open(tmp_path / "run")  # verifies every checksum, figures included
    assert "figures/kv-sawtooth.csv" in store.manifest.files
    # From the run (occupancy.parquet) the sawtooth equals the one from the trace files.
    from_run = pd.read_csv(figs / "kv-sawtooth.csv")
    render_figures(["kv-sawtooth"], traces=EXAMPLES, out_dir=tmp_path / "f2", png=False)
    from_files = pd.read_csv(tmp_path / "f2" / "kv-sawtooth.csv")
    pd.testing.assert_frame_equal(from_run, from_files)
    # compression-cdf from a run is in tokens (no text in the run).
    assert set(pd.read_csv(figs / "compression-cdf.csv")["unit"]) == {"tokens"}


def test_trace_id_selection_and_missing(tmp_path):
    rep = render_figures(["kv-sawtooth"], traces=EXAMPLES, out_dir=tmp_path, png=False, trace_id="nope")
    assert "nope" in rep.skipped["kv-sawtooth"]
    rep = render_figures(["kv-sawtooth"], out_dir=tmp_path, png=False)
    assert "--traces" in rep.skipped["kv-sawtooth"]


@pytest.mark.slow
@needs_examples
def test_png_export_with_chromium(tmp_path, probe_run):
    if chromium_path() is None:
        pytest.skip("chromium not installed: PNG export is skipped by design")
    rep = render_figures(["all"], runs=[probe_run], traces=EXAMPLES, out_dir=tmp_path / "f")
    assert rep.png_skipped is None and not rep.skipped
    for name in REGISTRY:
        png = (tmp_path / "f" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_sawtooth_from_a_memento_only_run(tmp_path):
    """A runtime capture of a memento run holds only its own occupancy; vanilla is the same stream unevicted."""
    occ = pd.DataFrame(
        {
            "trace": "g0",
            "mode": "memento",
            "step": np.arange(8),
            "tokens": [1, 2, 3, 4, 5, 3, 4, 5],
            "bytes": np.array([1, 2, 3, 4, 5, 3, 4, 5]) * 64,
        }
    )
    store = RunStore.create(tmp_path / "r", "generate", {})
    store.write_table("occupancy.parquet", occ)
    store.write_table(
        "traces.parquet",
        pd.DataFrame(
            {
                "trace": ["g0"],
                "n_tokens": [8],
                "prompt_len": [2],
                "n_blocks": [1],
                "mode": ["memento"],
                "source": ["gen"],
            }
        ),
    )
    rep = render_figures(["kv-sawtooth"], runs=[tmp_path / "r"], out_dir=tmp_path / "f", png=False)
    assert not rep.skipped
    df = pd.read_csv(tmp_path / "f" / "kv-sawtooth.csv")
    assert df[df["mode"] == "memento"]["tokens"].tolist() == [3, 4, 5, 3, 4, 5]
    assert df[df["mode"] == "vanilla"]["tokens"].tolist() == [3, 4, 5, 6, 7, 8]
    assert df["kv_gb"].tolist() == pytest.approx((df["tokens"] * 64 / 2**30).tolist())


@needs_examples
def test_without_chromium_png_is_skipped_with_a_reason(tmp_path, monkeypatch):
    import memento_lens.analyses.figures as figs

    monkeypatch.setattr(figs, "chromium_path", lambda: None)
    rep = render_figures(["kv-sawtooth"], traces=EXAMPLES[:1], out_dir=tmp_path)
    assert rep.png_skipped and "chromium not found" in rep.png_skipped
    assert [Path(f).suffix for f in rep.rendered[0].files] == [".csv", ".md", ".html"]
    assert not (tmp_path / "kv-sawtooth.png").exists()


def probes_shaped_ablations() -> pd.DataFrame:
    """Rows shaped like probes.ablation's output: several metrics, baselines at layer -1, per-head patches."""
    rows = []

    def add(exp, variant, layer, head, direction, metric, value):
        rows.append(
            {
                "experiment": exp,
                "model": "toy",
                "checkpoint": "",
                "variant": variant,
                "layer": layer,
                "head": head,
                "direction": direction,
                "metric": metric,
                "value": value,
                "ci_low": value - 0.01,
                "ci_high": value + 0.01,
                "n": 64,
            }
        )

    for variant, acc, nll in (("normal", 0.95, 0.2), ("restart", 0.70, 0.9)):
        add("restart", variant, -1, -1, "", "accuracy_teacher_forced", acc)
        add("restart", variant, -1, -1, "", "nll_teacher_forced", nll)
        add("patch", variant, -1, -1, "", "accuracy", acc)
        add("patch", variant, -1, -1, "", "nll", nll)
    add("restart", "restart", -1, -1, "", "kl_teacher_forced", 0.4)
    for layer in range(3):
        for head in (-1, 0):
            add("patch", "normal_kv", layer, head, "normal->restart", "accuracy", 0.7 + 0.1 * layer + 0.01 * head)
            add("patch", "normal_kv", layer, head, "normal->restart", "nll", 0.9 - 0.2 * layer)
    return pd.DataFrame(rows)


def test_restart_ablation_on_probes_shaped_rows(tmp_path):
    store = RunStore.create(tmp_path / "r", "ablation", {})
    store.write_table("ablations.parquet", probes_shaped_ablations())
    rep = render_figures(["restart-ablation"], runs=[tmp_path / "r"], out_dir=tmp_path / "f", png=False)
    assert not rep.skipped
    df = pd.read_csv(tmp_path / "f" / "restart-ablation.csv", keep_default_na=False)
    restart = df[df["panel"] == "restart"]
    assert len(restart) == 5 and set(restart["metric"]) == {
        "accuracy_teacher_forced",
        "nll_teacher_forced",
        "kl_teacher_forced",
    }
    curve = df[df["panel"] == "patch"]
    acc = curve[curve["metric"] == "accuracy"]
    assert acc["layer"].tolist() == [0, 1, 2]
    assert acc["value"].astype(float).tolist() == pytest.approx([0.69, 0.79, 0.89])  # head -1 rows only
    base = df[df["panel"] == "patch_base"]
    assert sorted(zip(base["metric"], base["variant"])) == [
        ("accuracy", "normal"),
        ("accuracy", "restart"),
        ("nll", "normal"),
        ("nll", "restart"),
    ]
    md = (tmp_path / "f" / "restart-ablation.md").read_text()
    assert "| toy |  | accuracy_teacher_forced | 0.95 | 0.7 | -0.25 |" in md


@needs_examples
def test_compression_cdf_mixes_runs_and_trace_files_in_tokens(tmp_path):
    tok = ApproxTokenizer()
    res = ingest_files(EXAMPLES[:1], tok, keep_text=True)
    write_run(tmp_path / "run", res.traces, tok)
    rep = render_figures(
        ["compression-cdf"], runs=[tmp_path / "run"], traces=EXAMPLES[1:], out_dir=tmp_path / "f", png=False
    )
    assert not rep.skipped
    df = pd.read_csv(tmp_path / "f" / "compression-cdf.csv")
    assert set(df["unit"]) == {"tokens"} and set(df["source"]) == {"run", "memento_example_code"}
    both = block_stats(ingest_files(EXAMPLES, tok).traces, tok.ids)
    assert df[df["domain"] == "all"]["ratio"].sort_values().tolist() == pytest.approx(sorted(both["ratio_tokens"]))


def test_trace_objects_with_their_own_token_ids(tmp_path):
    """Runtime traces (here the toy vocabulary) plot with their own memento ids."""
    from memento_lens.runtime.toy.task import TOKEN_TO_ID, TOY_TOKENS
    from memento_lens.runtime.trace import Trace

    d = TOKEN_TO_ID
    one = [
        d["<|block_start|>"],
        *[d["3"]] * 5,
        d["<|block_end|>"],
        d["<|summary_start|>"],
        d["0"],
        d["0"],
        d["3"],
        d["<|summary_end|>"],
    ]
    trace = Trace("toy0", [d["<bos>"], *one * 3, d["<eos>"]], prompt_len=1)
    rep = render_figures(["kv-sawtooth"], traces=[trace], token_ids=TOY_TOKENS, out_dir=tmp_path, png=False)
    df = pd.read_csv(tmp_path / "kv-sawtooth.csv")
    mem = df[df["mode"] == "memento"]["tokens"].tolist()
    van = df[df["mode"] == "vanilla"]["tokens"].tolist()
    assert van[-1] == 38 and mem[-1] == 38 - 3 * 5  # each block's 5 digits evicted (delimiters stay)
    assert not rep.skipped


# -- titles say what was run, and fit (issue 20) ------------------------------------------------------------
def _plotted(name: str, df: pd.DataFrame):
    fig = REGISTRY[name]
    return fig.plot(df), fig.markdown(df)


def _subplot_titles(fig) -> list:
    """make_subplots' panel titles: the layout's text annotations."""
    return [a for a in fig.layout.annotations if a.text]


def test_restart_ablation_titles_name_only_what_ran_and_do_not_overlap(tmp_path):
    from memento_lens.analyses.figures import PNG_SIZE

    rows = probes_shaped_ablations()
    store = RunStore.create(tmp_path / "r", "ablation", {})
    store.write_table("ablations.parquet", rows[rows["experiment"] == "restart"])
    render_figures(["restart-ablation"], runs=[tmp_path / "r"], out_dir=tmp_path / "f", png=False)
    only_restart = pd.read_csv(tmp_path / "f" / "restart-ablation.csv", keep_default_na=False)
    fig, md = _plotted("restart-ablation", only_restart)
    assert fig.layout.title.text == "Restart ablation"  # no "and KV patching": no patching ran
    assert md.startswith("## Restart ablation\n")
    titles = _subplot_titles(fig)
    assert [t.text for t in titles] == [
        "accuracy (teacher-forced)",
        "KL to normal",
        "NLL (teacher-forced)",
    ]
    assert fig.layout.yaxis.title.text == "restart ablation"
    # each title fits its panel in the PNG (at most ~0.6 em per character at the titles' font size), also with
    # the toy's fourth restart panel (greedy generation)
    extra = only_restart[only_restart["metric"] == "kl_teacher_forced"].assign(metric="memento_exact_generated")
    for f in (fig, _plotted("restart-ablation", pd.concat([only_restart, extra], ignore_index=True))[0]):
        titles = _subplot_titles(f)
        axes = [f.layout[f"xaxis{i + 1 if i else ''}"] for i in range(len(titles))]
        for t, ax in zip(titles, axes):
            width_px = (ax.domain[1] - ax.domain[0]) * PNG_SIZE["width"]
            assert len(t.text) * 0.6 * t.font.size <= width_px, (t.text, width_px)

    store2 = RunStore.create(tmp_path / "r2", "ablation", {})
    store2.write_table("ablations.parquet", rows)
    rep = render_figures(["restart-ablation"], runs=[tmp_path / "r2"], out_dir=tmp_path / "f2", png=False)
    assert not rep.skipped
    assert (tmp_path / "f2" / "restart-ablation.md").read_text().startswith("## Restart ablation and KV patching\n")
    patch_only = rows[rows["experiment"] == "patch"]
    store3 = RunStore.create(tmp_path / "r3", "ablation", {})
    store3.write_table("ablations.parquet", patch_only)
    render_figures(["restart-ablation"], runs=[tmp_path / "r3"], out_dir=tmp_path / "f3", png=False)
    assert (tmp_path / "f3" / "restart-ablation.md").read_text().startswith("## KV patching\n")


def test_compression_cdf_of_a_run_without_domains_is_not_titled_unknown(tmp_path):
    from memento_lens.analyses.figures.compression_cdf import panel_titles

    df = pd.DataFrame(
        {
            "domain": ["unknown"] * 3,
            "source": "toy",
            "unit": "tokens",
            "ratio": [0.1, 0.2, 0.3],
            "cdf": [1 / 3, 2 / 3, 1.0],
        }
    )
    fig, md = _plotted("compression-cdf", df)
    titles = [t.text for t in _subplot_titles(fig)]
    assert titles == ["all blocks, no domain recorded (3 blocks)"] == panel_titles(df)
    assert "unknown" not in md and "no domain recorded" in md
    named = df.assign(domain="math")
    assert [t.text for t in _subplot_titles(_plotted("compression-cdf", named)[0])] == ["math (3 blocks)"]


def test_all_head_rows_keeps_the_every_head_rows_only_when_there_are_some():
    from memento_lens.analyses.figures.base import all_head_rows
    from memento_lens.runtime.rundir.schema import ALL_HEADS

    mixed = pd.DataFrame({"head": [ALL_HEADS, 0, 1, ALL_HEADS], "accuracy": [0.5, 0.1, 0.2, 0.6]})
    assert all_head_rows(mixed)["accuracy"].tolist() == [0.5, 0.6]
    per_head = mixed[mixed["head"] >= 0]  # a table of per-head rows only is kept whole, not emptied
    assert all_head_rows(per_head)["accuracy"].tolist() == [0.1, 0.2]
    assert all_head_rows(pd.DataFrame({"accuracy": [0.3]}))["accuracy"].tolist() == [0.3]
