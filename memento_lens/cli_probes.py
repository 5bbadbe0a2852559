"""CLI: ``probe passcode``, ``ablate restart``, ``ablate patch`` (heavy modules imported inside commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import cli_options as opt
from .errors import user_errors

probe_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Probe the implicit KV channel (passcode probes)."
)
ablate_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="Restart ablation and causal KV patching.")

MODEL_HELP = "toy, toy@<checkpoint>, random:tiny, or a local HF checkpoint directory."


def _ints(text: Optional[str], option: str) -> tuple[int, ...]:
    if text is None or text.strip() in ("", "all"):
        return ()
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        from memento_lens.probes.features import ProbeInputError

        raise ProbeInputError(f"{option}: expected comma-separated integers, got {text!r}") from None


def _Progress(enabled: bool):
    """Stage bars with elapsed time and ETA on stderr (runtime.progress.StageBars: the sweeps' ProgressFn)."""
    from memento_lens.runtime.progress import StageBars

    return StageBars(enabled)


_setup = opt.setup  # one thread/seed rule for every command (cli_options.setup)


def _report_skips(skips: list[dict]) -> None:
    for s in skips:
        print(f"skipped: {s}", file=sys.stderr)


# -- probe passcode ----------------------------------------------------------------------------------------
@probe_app.command("passcode")
def passcode_cmd(
    model: str = typer.Option("toy", "--model", help=MODEL_HELP),
    task: str = typer.Option("auto", "--task", help="toy (block digits are the passcode) | trace | auto."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Memento JSON trace for real models."),
    device: str = opt.device(),
    dtype: str = opt.dtype("float32"),
    seed: int = opt.seed(),
    samples: Optional[int] = typer.Option(None, "--samples", help="Sequences (default 50000; --quick 2000)."),
    layers: Optional[str] = typer.Option(
        None, "--layers", help="Comma-separated layer indices (negative from the end); default all."
    ),
    heads: Optional[str] = typer.Option(None, "--heads", help="Also probe these KV heads one at a time."),
    distances: Optional[str] = typer.Option(None, "--distances", help="Masked distances (default 1..7; --quick 1,2)."),
    distance_layers: str = typer.Option(
        "all", "--distance-layers", help="Layers for masked distances >= 2: all | last."
    ),
    target_block: int = typer.Option(1, "--target-block", help="0-based block holding the passcode (1 = paper's T2)."),
    positions: str = typer.Option("span", "--positions", help="span (summary_start..summary_end) | digits (toy)."),
    probes: str = typer.Option("mlp,linear", "--probes", help="Probe kinds to fit, comma-separated: mlp, linear."),
    control: bool = typer.Option(True, "--control/--no-control", help="Fit the control task (selectivity)."),
    checkpoints: Optional[str] = typer.Option(
        None,
        "--checkpoints",
        help="Toy only: 'all' or comma-separated checkpoint names; one sweep per checkpoint with its task accuracy.",
    ),
    features_from: Optional[Path] = typer.Option(
        None, "--features-from", help="Re-fit probes on features cached in this run directory."
    ),
    cache_features: bool = typer.Option(
        True, "--cache-features/--no-cache-features", help="Save features (safetensors) in the run directory."
    ),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest on a loaded 2-core box)."),
    batch_size: int = typer.Option(
        256, "--batch-size", min=1, help="Sequences per feature-extraction forward (lower it for real models)."
    ),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Probe seeds per fit (default 3; --quick 1)."),
    max_epochs: Optional[int] = typer.Option(
        None, "--max-epochs", help="Epoch cap (default 200; --quick 30); rows record hit_cap."
    ),
    out: Path = opt.out(Path("runs/passcode")),
    overwrite: bool = opt.overwrite(),
    quick: bool = typer.Option(
        False, "--quick", help="Demo preset: 2000 samples, layers 0,-1, distances 1,2, 1 seed, 30-epoch cap."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result rows as a JSON list."),
) -> None:
    """Passcode probes on memento K/V with the channel decomposition: per condition, layer and probe the normal-world
    accuracy, the restart world (memento recomputed without its block: the explicit text channel), a probe on the
    memento text alone, and the implicit excess (normal - restart) with paired CIs."""
    with user_errors():
        import dataclasses

        from memento_lens.probes.features import ProbeInputError
        from memento_lens.probes.models import make_probe
        from memento_lens.probes.passcode import QUICK, PasscodeConfig
        from memento_lens.probes.sweep import resolve_checkpoints, run_sweep
        from memento_lens.runtime.rundir.store import RunStore, json_rows

        _setup(threads, seed)
        base = dict(QUICK) if quick else {}
        train = base.get("train", PasscodeConfig().train)
        train = dataclasses.replace(train, threads=threads)
        if seeds is not None:
            if seeds < 1:
                raise ProbeInputError(f"--seeds {seeds}: need at least 1 probe seed")
            train = dataclasses.replace(train, seeds=seeds)
        if max_epochs is not None:
            if max_epochs < 1:
                raise ProbeInputError(f"--max-epochs {max_epochs}: need at least 1")
            train = dataclasses.replace(train, max_epochs=max_epochs)
        base["train"] = train
        if samples is not None:
            if samples < 20:
                raise ProbeInputError(f"--samples {samples}: need at least 20 for a train/validation split")
            base["samples"] = samples
        if distances is not None:
            base["distances"] = _ints(distances, "--distances")
        probe_names = tuple(p.strip() for p in probes.split(",") if p.strip())
        for p in probe_names:
            make_probe(p)
        if layers is not None:
            base["layers"] = _ints(layers, "--layers")
        cfg = PasscodeConfig(
            model=model,
            task=task,
            trace=str(trace) if trace else None,
            heads=_ints(heads, "--heads"),
            target_block=target_block,
            distance_layers=distance_layers,
            positions=positions,
            probes=probe_names,
            control=control,
            seed=seed,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            **base,
        )
        specs = resolve_checkpoints(model, checkpoints)
        store = RunStore.create(
            out, "probe_passcode", {"passcode": cfg.to_dict(), "checkpoints": specs}, overwrite=overwrite
        )
        with _Progress(not as_json or sys.stderr.isatty()) as bar:
            run = run_sweep(cfg, store, specs, features_from=features_from, cache_features=cache_features, progress=bar)
        df = run.rows
        _report_skips(run.skips)
        if as_json:
            print(json.dumps(json_rows(df.to_dict("records"))))
        else:
            cols = [
                "condition",
                "distance",
                "layer",
                "head",
                "probe",
                "accuracy",
                "restart_accuracy",
                "text_accuracy",
                "text_ceiling",
                "implicit_excess",
                "excess_ci_low",
                "excess_ci_high",
                "hit_cap",
            ]
            if checkpoints:
                cols = ["checkpoint", "task_accuracy", *cols]
            _print_table(
                df[cols],
                f"wrote {out}/probe_results.parquet (chance 0.100; layer -1 = all probed layers; accuracy = normal "
                "world; causal_control is a pipeline check)",
            )


def _print_table(df, footer: str) -> None:
    from rich.console import Console
    from rich.table import Table

    short = {
        "condition": "cond",
        "distance": "dist",
        "control_accuracy": "control",
        "task_accuracy": "task_acc",
        "direction": "dir",
        "checkpoint": "ckpt",
    }
    t = Table(show_lines=False)
    for c in df.columns:
        t.add_column(short.get(str(c), str(c)), no_wrap=True)
    for r in df.itertuples(index=False):
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    console = Console(width=200)
    console.print(t)
    console.print(footer)


# -- ablate ------------------------------------------------------------------------------------------------
# The experiments and their run directories live in memento_lens.probes.ablation (run_restart, run_patch);
# these commands parse options and print.
@ablate_app.command("restart")
def restart_cmd(
    model: str = typer.Option("toy", "--model", help=MODEL_HELP),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Memento JSON trace (real models)."),
    device: str = opt.device(),
    dtype: str = opt.dtype("float32"),
    seed: int = opt.seed(),
    samples: Optional[int] = typer.Option(None, "--samples", help="Toy sequences (default 2000; --quick 256)."),
    generated: bool = typer.Option(True, "--generated/--no-generated", help="Toy: also greedy-generate the mementos."),
    threads: int = opt.threads(1),
    out: Path = opt.out(Path("runs/restart")),
    overwrite: bool = opt.overwrite(),
    quick: bool = opt.flag("--quick", "Small preset for a fast look (fewer sequences)."),
    as_json: bool = opt.as_json(),
) -> None:
    """Restart ablation: normal memento KV vs restart (recomputed without the block), same weights and sequences."""
    with user_errors():
        from memento_lens.probes.ablation import RestartConfig, run_restart

        cfg = RestartConfig(
            model=model,
            trace=trace,
            samples=samples,
            seed=seed,
            generated=generated,
            device=device,
            dtype=dtype,
            quick=quick,
        )
        _setup(threads, seed)
        with _Progress(not as_json or sys.stderr.isatty()) as bar:
            res = run_restart(out, cfg, overwrite=overwrite, progress=bar)
        _report_ablation(res, out, as_json, res.rows[["variant", "metric", "value", "ci_low", "ci_high", "n"]])


@ablate_app.command("patch")
def patch_cmd(
    model: str = typer.Option("toy", "--model", help=MODEL_HELP),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Memento JSON trace (real models)."),
    device: str = opt.device(),
    dtype: str = opt.dtype("float32"),
    seed: int = opt.seed(),
    samples: Optional[int] = typer.Option(None, "--samples", help="Toy sequences (default 1000; --quick 128)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers; default all."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Also patch these KV heads one at a time."),
    directions: str = typer.Option(
        "restart->normal,normal->restart",
        "--directions",
        help="Patch directions, comma-separated: restart->normal, normal->restart.",
    ),
    threads: int = opt.threads(1),
    out: Path = opt.out(Path("runs/patch")),
    overwrite: bool = opt.overwrite(),
    quick: bool = opt.flag("--quick", "Small preset for a fast look (fewer sequences)."),
    as_json: bool = opt.as_json(),
) -> None:
    """Causal KV patching: swap earlier mementos' K/V between normal and restart runs at one layer (or head)."""
    with user_errors():
        from memento_lens.probes.ablation import PatchConfig, run_patch

        cfg = PatchConfig(
            model=model,
            trace=trace,
            samples=samples,
            seed=seed,
            layers=list(_ints(layers, "--layers")) or None,
            heads=list(_ints(heads, "--heads")),
            directions=[d.strip() for d in directions.split(",") if d.strip()],
            device=device,
            dtype=dtype,
            quick=quick,
        )
        _setup(threads, seed)
        with _Progress(not as_json or sys.stderr.isatty()) as bar:
            res = run_patch(out, cfg, overwrite=overwrite, progress=bar)
        df = res.rows
        shown = df[df["metric"].isin(["accuracy", "delta_accuracy", "nll", "kl"])][
            ["variant", "direction", "layer", "head", "metric", "value", "ci_low", "ci_high"]
        ]
        _report_ablation(res, out, as_json, shown)


def _report_ablation(res, out: Path, as_json: bool, shown) -> None:
    """Print an ablation result: the store's notes, then all rows as JSON or the ``shown`` columns as a table.

    A CI exists only over at least two sequences: with one (a real trace) the table shows ``-`` in the CI
    columns and says ``n = 1: no CI``; JSON carries null bounds."""
    from memento_lens.probes.ablation import no_ci_note
    from memento_lens.runtime.rundir.store import json_rows

    for note in res.run.notes():  # e.g. the identical command's complete run was found and is shown
        print(note, file=sys.stderr)
    if as_json:
        print(json.dumps(json_rows(res.rows.to_dict("records"))))
        return
    n = int(res.rows["n"].min()) if len(res.rows) else 0
    footer = f"wrote {out}/ablations.parquet"
    note = no_ci_note(n)
    if note:
        shown = shown.astype({c: object for c in ("ci_low", "ci_high") if c in shown.columns})
        for c in ("ci_low", "ci_high"):
            if c in shown.columns:
                shown[c] = ["-" if v != v else v for v in shown[c]]  # NaN: undefined, not a number
        footer = f"{note}\n{footer}"
    _print_table(shown, footer)


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
    app.add_typer(ablate_app, name="ablate")
