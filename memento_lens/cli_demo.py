"""CLI: ``demo`` — the whole pipeline on the shipped toy model, into one run directory, then the app.

The pipeline is :func:`memento_lens.demo.run_demo`; this command parses options, shows a progress line per
step, prints the summary table (or JSON) and starts the app on the new run.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import typer

from . import cli_options as opt
from .demo import DEFAULT_OUT  # stdlib-only at import: --help stays instant
from .errors import user_errors


@contextlib.contextmanager
def _status(console: Any, name: str) -> Iterator[None]:
    """A status line while a demo step runs, then a tick with its time."""
    t0 = time.perf_counter()
    with console.status(f"[bold]{name}[/bold] …"):
        yield
    console.print(f"[green]✓[/green] {name}  ({time.perf_counter() - t0:.1f} s)")


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
    # a fixed row order: a stored summary (reused run) comes back with its keys sorted
    task = summary["task_accuracy"]
    for key in sorted(task, key=lambda k: (list(labels).index(k.split("/", 1)[1]), k.split("/", 1)[0] != "normal")):
        variant, metric = key.split("/", 1)
        t.add_row(f"task accuracy ({labels[metric]}), {variant} KV", f"{task[key]:.1%}")
    conditions = {
        "direct": "direct (M2)",
        "masked": "masked (M3, block erased)",
        "causal_control": "causal control (M1)",
    }
    probes = summary["probe_accuracy_last_layer"]
    channels = summary.get("probe_channels_last_layer") or {}
    for cond in (c for c in conditions if c in probes):
        value = f"{probes[cond]:.1%}  (chance 10%)"
        ch = channels.get(cond)
        flag = (summary.get("probe_flags_last_layer") or {}).get(cond, {})
        if ch and cond == "causal_control" and "check" in flag:  # a check against chance, not an excess
            value = f"normal {ch['normal']:.1%} · check against chance: {flag['check']}"
            if "check_bound" in ch:
                value += f" (lower bound {ch['check_bound']:.1%} at alpha {ch['check_alpha']:.3f}, Bonferroni)"
            if "n_val" in ch:
                value += f"\nn_val {ch['n_val']:.0f}, {ch.get('n_seeds', 0):.0f} probe seeds x {ch.get('n_data_seeds', 0):.0f} data seeds"
            t.add_row(f"passcode probe, last layer, {conditions[cond]}", value)
            continue
        if ch:  # the channel decomposition: is it the memento text, or K/V beyond it?
            value = (
                f"normal {ch['normal']:.1%} · restart {ch['restart']:.1%} · text {ch['text']:.1%} · "
                f"excess {100 * ch['excess']:+.1f} [{100 * ch['excess_ci_low']:+.1f}, {100 * ch['excess_ci_high']:+.1f}] pts"
            )
            refs = [w for w in ("same_sum", "foreign", "delimiter_hidden") if f"excess_{w}" in ch]
            if refs:  # normal minus each on-distribution reference, with its CI
                value += "\n" + " · ".join(
                    f"vs {w} {ch[w]:.1%}: {100 * ch[f'excess_{w}']:+.1f} "
                    f"[{100 * ch[f'excess_{w}_ci_low']:+.1f}, {100 * ch[f'excess_{w}_ci_high']:+.1f}]"
                    for w in refs
                )
            if "n_val" in ch:
                value += (
                    f"\n{flag.get('probe', '')} probe, n_val {ch['n_val']:.0f}, {ch.get('n_seeds', 0):.0f} probe seeds "
                    f"x {ch.get('n_data_seeds', 0):.0f} data seeds, stopped by {flag.get('stopped_by', '?')}"
                )
        t.add_row(f"passcode probe, last layer, {conditions[cond]}", value)
    peak = summary["peak_kv_tokens"]
    t.add_row(
        "peak KV per trace, vanilla → memento (tokens)",
        f"{peak['vanilla']:.0f} → {peak['memento']:.0f}  ({peak['vanilla'] / peak['memento']:.2f}×)",
    )
    console.print(t)
    console.print(f"run directory: {out}   figures: {out / 'figures'}")


def demo_cmd(
    out: Path = typer.Option(
        DEFAULT_OUT,
        "--out",
        "-o",
        help="Run directory to write (this same demo's complete run is reused; an earlier different demo run is "
        "replaced).",
    ),
    no_app: bool = typer.Option(False, "--no-app", help="Stop before starting the app (CI)."),
    model: str = typer.Option("toy", "--model", help="toy or toy@<checkpoint> (the demo's task is the toy's)."),
    traces: int = typer.Option(256, "--traces", help="Mementified traces to generate."),
    seed: int = opt.seed(),
    device: str = opt.device(),
    port: int = typer.Option(8501, "--port", help="App port (127.0.0.1)."),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest for the toy on 2 cores)."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace --out even if it holds another memento-lens run (never a directory of other files).",
    ),
    no_png: bool = typer.Option(False, "--no-png", help="Skip static PNG export (needs chromium)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run the whole pipeline on the shipped toy model (no network, no training), then open the app."""
    from rich.console import Console

    from .demo import DemoConfig, run_demo

    console = Console(stderr=True)
    with user_errors():
        from memento_lens.runtime.validate import check_int, check_output_dir, check_port

        check_int(traces, "--traces", min=1)
        check_port(port, "--port")
        check_int(threads, "--threads", min=0)
        check_output_dir(out, "--out")
        t0 = time.perf_counter()
        config = DemoConfig(model=model, traces=traces, seed=seed, device=device, threads=threads, png=not no_png)
        result = run_demo(out, config, overwrite=overwrite, step=lambda name: _status(console, name))
        for note in result.run.notes():  # e.g. this same demo's complete run was found: its stored summary
            console.print(note)
        summary = result.summary.to_dict()
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
