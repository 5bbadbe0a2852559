"""CLI: ``demo`` — the whole pipeline on the shipped toy model, into one run directory, then the app.

Steps (each with a progress line): generate mementified traces with KV capture (normal + restart memento
K/V, evicted blocks, attention of a few traces); quick passcode probe sweep; restart ablation and causal
KV patching; the paper figures; a summary table; the app on the new run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import typer

from .errors import user_errors

DEFAULT_OUT = Path("runs/demo")


def _step(console: Any, timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    with console.status(f"[bold]{name}[/bold] …"):
        result = fn()
    timings[name] = time.perf_counter() - t0
    console.print(f"[green]✓[/green] {name}  ({timings[name]:.1f} s)")
    return result


def _claim_out(out: Path, overwrite: bool) -> None:
    """The demo may replace an earlier demo run, never anything else (unless --overwrite)."""
    from memento_lens.runtime.store import MANIFEST, RunError

    if not out.exists() or not any(out.iterdir()) or overwrite:
        return
    manifest = out / MANIFEST
    try:
        is_demo = bool(json.loads(manifest.read_text()).get("config", {}).get("demo"))
    except (OSError, ValueError):
        is_demo = False
    if not is_demo:
        raise RunError(
            f"{out}: holds something other than a memento-lens demo run; choose another --out or pass --overwrite"
        )


def run_demo(
    out: Path = DEFAULT_OUT,
    *,
    model_spec: str = "toy",
    traces: int = 256,
    probe_samples: int = 4000,
    ablation_samples: int = 64,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 1,
    overwrite: bool = False,
    png: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Run the demo pipeline into ``out``; return the summary (also written to ``out/demo_summary.json``)."""

    import numpy as np
    import pandas as pd
    import torch
    from rich.console import Console

    from memento_lens.analyses.figures import render_figures
    from memento_lens.probes.ablation import (
        ABLATION_COLUMNS,
        patch_rows,
        patch_sweep,
        restart_ablation,
        restart_rows,
        toy_generated_accuracy,
        toy_layout,
    )
    from memento_lens.probes.passcode import QUICK, PasscodeConfig, run_passcode
    from memento_lens.runtime.capture import AttentionWeights, EvictedBlockKV, MementoKV, generate_to_run
    from memento_lens.runtime.generate import SamplingConfig
    from memento_lens.runtime.model import load_model
    from memento_lens.runtime.store import RunStore
    from memento_lens.runtime.toy.task import BOS, EOS, TOY_MASKING, ToyLayout, sample

    console = console or Console(stderr=True)
    out = Path(out)
    torch.set_num_threads(max(1, threads))
    _claim_out(out, overwrite)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    layout = ToyLayout()

    loaded = _step(console, timings, f"load {model_spec}", lambda: load_model(model_spec, device=device))
    model, tokens = loaded.model, loaded.require_tokens()
    n_layers = int(model.config.num_hidden_layers)

    # Attention over every query is pos x pos per layer and head; the demo keeps the memento queries of the
    # first four blocks (what the app's attention page is about), which keeps the run small.
    queries = tuple(int(p) for b in range(4) for p in layout.memento_span(b))
    captures = [MementoKV(), EvictedBlockKV(), AttentionWeights(layers=tuple(range(n_layers)), queries=queries)]
    sampling = SamplingConfig(temperature=1.0, seed=seed, max_new_tokens=layout.length - 1)
    run_config = {"demo": True, "traces": traces, "seed": seed, "model": model_spec}

    def generate() -> RunStore:
        return generate_to_run(
            model,
            [[BOS]] * traces,
            TOY_MASKING,
            tokens,
            out,
            sampling=sampling,
            eos_token_id=EOS,
            tokenizer=loaded.tokenizer,
            run_config=run_config,
            captures=captures,
            batch_size=64,
            overwrite=True,
        )

    store = _step(console, timings, f"generate {traces} mementified traces with KV capture", generate)

    def probe() -> pd.DataFrame:
        cfg = PasscodeConfig(model=model_spec, seed=seed, device=device, **{**QUICK, "samples": probe_samples})
        return run_passcode(cfg, loaded).rows

    probe_rows = _step(console, timings, f"passcode probes (quick: {probe_samples} sequences)", probe)
    store.write_table("probe_results.parquet", probe_rows)

    def ablate() -> pd.DataFrame:
        ids = sample(ablation_samples, np.random.default_rng(seed)).token_ids
        lay = toy_layout()
        acc = restart_ablation(model, ids, lay, device=device)
        gen = {w: toy_generated_accuracy(model, ids, lay, w, device=device) for w in ("normal", "restart")}
        rows = restart_rows(acc, lay, model_spec, "", gen)
        layers = list(range(n_layers))
        dirs = ["restart->normal", "normal->restart"]
        patch = patch_sweep(model, ids, lay, layers, heads=[-1], directions=dirs, device=device)
        rows += patch_rows(patch, lay, model_spec, layers, [-1], dirs, "")
        return pd.DataFrame(rows, columns=ABLATION_COLUMNS)

    ablations = _step(console, timings, f"restart ablation and KV patching ({ablation_samples} sequences)", ablate)
    store.write_table("ablations.parquet", ablations)

    report = _step(
        console,
        timings,
        "render the paper figures",
        lambda: render_figures(["all"], runs=[store], out_dir=out / "figures", png=png),
    )

    summary = summarize(store, probe_rows, ablations, n_layers)
    summary["figures"] = {
        "written": sorted(getattr(report, "written", {}) or {}),
        "skipped": dict(getattr(report, "skipped", {}) or {}),
    }
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    store.write_json("demo_summary.json", summary)
    store.mark_complete(demo=True)
    return summary


def summarize(store: Any, probe_rows: Any, ablations: Any, n_layers: int) -> dict[str, Any]:
    """The demo's headline numbers, read back from the tables just written."""
    occ = store.read_table("occupancy.parquet")
    per_trace = occ.groupby("trace").agg(memento=("tokens", "max"), vanilla=("step", "max"))
    bpt = float((occ["bytes"] / occ["tokens"]).iloc[0]) if len(occ) else float("nan")
    restart = ablations[ablations["experiment"] == "restart"]
    task = {
        f"{r.variant}/{r.metric}": float(r.value)
        for r in restart.itertuples()
        if r.metric in ("accuracy_teacher_forced", "memento_exact_generated")
    }
    last = probe_rows[(probe_rows["layer"] == n_layers - 1) & (probe_rows["probe"] == "mlp")]
    probes = {}
    for cond in ("direct", "masked", "causal_control"):
        sub = last[last["condition"] == cond]
        if cond == "masked":
            sub = sub[sub["distance"] == 1]
        if len(sub):
            probes[cond] = float(sub["accuracy"].iloc[0])
    return {
        "task_accuracy": task,
        "probe_accuracy_last_layer": probes,
        "peak_kv_tokens": {
            "vanilla": float(per_trace["vanilla"].mean() + 1),
            "memento": float(per_trace["memento"].mean()),
        },
        "kv_bytes_per_token": bpt,
        "n_traces": int(occ["trace"].nunique()),
    }


def print_summary(summary: dict[str, Any], out: Path, console: Any) -> None:
    from rich.table import Table

    out = Path(out)
    t = Table(title="memento-lens demo (shipped toy model)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    labels = {
        "accuracy_teacher_forced": "memento digits, teacher-forced",
        "memento_exact_generated": "whole mementos, generated",
    }
    for key, value in summary["task_accuracy"].items():
        variant, metric = key.split("/", 1)
        t.add_row(f"task accuracy ({labels[metric]}), {variant} KV", f"{value:.1%}")
    for cond, value in summary["probe_accuracy_last_layer"].items():
        label = {
            "direct": "direct (M2)",
            "masked": "masked (M3, block erased)",
            "causal_control": "causal control (M1)",
        }[cond]
        t.add_row(f"passcode probe, last layer, {label}", f"{value:.1%}  (chance 10%)")
    peak = summary["peak_kv_tokens"]
    t.add_row(
        "peak KV per trace, vanilla → memento (tokens)",
        f"{peak['vanilla']:.0f} → {peak['memento']:.0f}  ({peak['vanilla'] / peak['memento']:.2f}×)",
    )
    console.print(t)
    console.print(f"run directory: {out}   figures: {out / 'figures'}")


def demo_cmd(
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Run directory to write (an earlier demo run is replaced)."),
    no_app: bool = typer.Option(False, "--no-app", help="Stop before starting the app (CI)."),
    model: str = typer.Option("toy", "--model", help="toy or toy@<checkpoint> (the demo's task is the toy's)."),
    traces: int = typer.Option(256, "--traces", help="Mementified traces to generate."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    port: int = typer.Option(8501, "--port", help="App port (127.0.0.1)."),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest for the toy on 2 cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it is not a demo run."),
    no_png: bool = typer.Option(False, "--no-png", help="Skip static PNG export (needs chromium)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run the whole pipeline on the shipped toy model (no network, no training), then open the app."""
    from rich.console import Console

    console = Console(stderr=True)
    with user_errors():
        t0 = time.perf_counter()
        summary = run_demo(
            out,
            model_spec=model,
            traces=traces,
            seed=seed,
            device=device,
            threads=threads,
            overwrite=overwrite,
            png=not no_png,
            console=console,
        )
        if as_json:
            print(json.dumps(summary))
        else:
            print_summary(summary, out, Console())
        console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    if not no_app:
        import os

        from .cli_app import streamlit_command

        argv, env = streamlit_command([out], "127.0.0.1", port)
        print(f"memento-lens app on http://127.0.0.1:{port}  (run: {out}; Ctrl-C to stop)", flush=True)
        os.execve(argv[0], argv, env)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
