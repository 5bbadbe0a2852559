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

MODEL_HELP = opt.MODEL_HELP  # one spelling: toy, toy@<ckpt>, the real preset, a local checkpoint, random:*


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
        print(f"skipped {s['condition']} {s['distance']}: {s['reason']}", file=sys.stderr)


def _passcode_config(base: dict, **options):
    """The PasscodeConfig of ``probe passcode``'s options (validation lives in PasscodeConfig itself)."""
    import dataclasses

    from memento_lens.probes.passcode import QUICK, PasscodeConfig

    preset = dict(QUICK) if base.pop("quick") else {}
    train = preset.pop("train", PasscodeConfig().train)
    overrides = {k: v for k, v in base.pop("train").items() if v is not None}
    train = dataclasses.replace(train, **overrides)
    preset.update({k: v for k, v in base.items() if v is not None})
    return PasscodeConfig(train=train, **preset, **options)


# -- probe passcode ----------------------------------------------------------------------------------------
@probe_app.command("passcode")
def passcode_cmd(
    model: str = typer.Option("toy", "--model", help=MODEL_HELP),
    task: str = typer.Option("auto", "--task", help="toy (block digits are the passcode) | trace | auto."),
    trace: Optional[Path] = typer.Option(
        None, "--trace", help="Memento JSON trace for real models (refused for the toy task, which ignores it)."
    ),
    device: str = opt.device(),
    dtype: str = opt.dtype("float32"),
    seed: int = opt.seed(),
    samples: Optional[int] = typer.Option(
        None, "--samples", help="Sequences per data replicate (default 50000; --quick 2000)."
    ),
    data_seeds: Optional[int] = typer.Option(
        None, "--data-seeds", help="Independent data replicates pooled in every figure (default 2)."
    ),
    layers: Optional[str] = typer.Option(
        None, "--layers", help="Comma-separated layer indices (negative from the end); default all."
    ),
    heads: Optional[str] = typer.Option(None, "--heads", help="Also probe these KV heads (0-based) one at a time."),
    distances: Optional[str] = typer.Option(
        None, "--distances", help="Masked distances (default 1..7 where the task has them; --quick 1)."
    ),
    distance_layers: str = typer.Option(
        "all", "--distance-layers", help="Layers for masked distances >= 2: all | last."
    ),
    worlds: Optional[str] = typer.Option(
        None,
        "--worlds",
        help="Reference worlds beside normal and restart: same_sum, foreign, delimiter_hidden (default all; 'none').",
    ),
    target_block: int = typer.Option(1, "--target-block", help="0-based block holding the passcode (1 = paper's T2)."),
    positions: str = typer.Option("span", "--positions", help="span (summary_start..summary_end) | digits (toy)."),
    probes: Optional[str] = typer.Option(
        None, "--probes", help="Probe kinds to fit, comma-separated: mlp, linear (default both; --quick linear)."
    ),
    control: bool = typer.Option(
        True, "--control/--no-control", help="Fit the control task (labels a random function of the memento text)."
    ),
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
    threads: int = opt.threads(),
    batch_size: int = typer.Option(
        256,
        "--batch-size",
        help="Sequences per feature-extraction forward (clamped to --samples; lower it for real models).",
    ),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Probe seeds per fit (default 3)."),
    max_epochs: Optional[int] = typer.Option(
        None, "--max-epochs", help="Epoch cap of the MLP (default 400); rows record stopped_by and still_improving."
    ),
    patience: Optional[int] = typer.Option(
        None, "--patience", help="Epochs without a rise of the smoothed stop curve before a fit stops (default 50)."
    ),
    out: Path = opt.out(Path("runs/passcode")),
    overwrite: bool = opt.overwrite(),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Quick preset: 2 data replicates x 2000 samples, layers 0,-1, masked +1, linear probe (closed form).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result rows as a JSON list."),
    workers: int = opt.workers(),
    ray_address: Optional[str] = opt.ray_address(),
    gpus_per_worker: float = opt.gpus_per_worker(),
) -> None:
    """Passcode probes on memento K/V with the channel decomposition: per condition, layer and probe the normal-world
    accuracy, the restart world (memento recomputed without its block: the explicit text channel), the reference
    worlds (same-sum block, foreign passcode, delimiters hidden), a probe on the memento text alone, and the excess
    of the normal world over each, with CIs over samples, probe seeds and data replicates."""
    with user_errors():
        from memento_lens.probes.sweep import resolve_checkpoints, run_sweep
        from memento_lens.runtime.cluster import Sharding, require_ray
        from memento_lens.runtime.errors import OptionError
        from memento_lens.runtime.rundir.store import RunStore, json_rows

        sharding = Sharding(workers, ray_address, gpus_per_worker, threads=threads)
        sharding.check_device(device)
        if sharding.sharded:
            if features_from is not None:
                raise OptionError("--workers / --ray-address extract features; --features-from reuses cached ones")
            require_ray()  # before any model loads: the install command
        _setup(threads, seed)
        world_list = None
        if worlds is not None:
            world_list = () if worlds.strip() == "none" else tuple(w.strip() for w in worlds.split(",") if w.strip())
        cfg = _passcode_config(
            dict(
                quick=quick,
                train=dict(seeds=seeds, max_epochs=max_epochs, patience=patience, threads=threads),
                samples=samples,
                data_seeds=data_seeds,
                distances=_ints(distances, "--distances") if distances is not None else None,
                layers=_ints(layers, "--layers") if layers is not None else None,
                probes=tuple(p.strip() for p in probes.split(",") if p.strip()) if probes is not None else None,
                worlds=world_list,
            ),
            model=model,
            task=task,
            trace=str(trace) if trace else None,
            heads=_ints(heads, "--heads"),
            target_block=target_block,
            distance_layers=distance_layers,
            positions=positions,
            control=control,
            seed=seed,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
        )
        if cfg.batch_size > cfg.samples:
            import dataclasses

            print(f"--batch-size {cfg.batch_size} > --samples {cfg.samples}: using {cfg.samples}", file=sys.stderr)
            cfg = dataclasses.replace(cfg, batch_size=cfg.samples)
        specs = resolve_checkpoints(model, checkpoints)
        store = RunStore.create(
            out, "probe_passcode", {"passcode": cfg.to_dict(), "checkpoints": specs}, overwrite=overwrite
        )
        with _Progress(not as_json or sys.stderr.isatty()) as bar:
            run = run_sweep(
                cfg,
                store,
                specs,
                features_from=features_from,
                cache_features=cache_features,
                progress=bar,
                sharding=sharding,
            )
        _report_skips(run.skips)
        for spec, info in run.info.items():  # the sharded extraction's accounting (also in passcode_summary.json)
            if "sharding" in info:
                a = info["sharding"]
                print(
                    f"{spec}: features on {a['workers']} Ray worker(s): {a['units']} units, {a['rows']} rows, "
                    f"{a['seconds']:.1f} s, {a['retries']} retried",
                    file=sys.stderr,
                )
        if as_json:
            print(json.dumps(json_rows(run.rows.to_dict("records"))))
        else:
            _print_passcode(run.rows, out, cfg, bool(checkpoints))


def _print_passcode(df, out: Path, cfg, checkpoints: bool) -> None:
    """The passcode table: sentinels by name, every world beside normal, the check, how the fits stopped."""
    from memento_lens.probes.passcode import label

    cols = [
        "condition",
        "distance",
        "layer",
        "head",
        "probe",
        "accuracy",
        "restart_accuracy",
        "same_sum_accuracy",
        "foreign_accuracy",
        "delimiter_hidden_accuracy",
        "text_accuracy",
        "implicit_excess",
        "excess_ci_low",
        "excess_ci_high",
        "excess_delimiter_hidden",
        "check",
        "stopped_by",
    ]
    cols = [c for c in cols if c in df.columns and not (c.endswith("_accuracy") and df[c].isna().all())]
    if checkpoints:
        cols = ["checkpoint", "task_accuracy", *cols]
    shown = df[cols].copy()
    for c in ("layer", "head", "distance"):
        shown[c] = [label(c, int(v)) for v in shown[c]]
    n_val = int(df["n_val"].iloc[0]) if len(df) else 0
    improving = int(df["still_improving"].sum()) if "still_improving" in df else 0
    _print_table(
        shown.rename(
            columns={
                "restart_accuracy": "restart",
                "same_sum_accuracy": "same_sum",
                "foreign_accuracy": "foreign",
                "delimiter_hidden_accuracy": "delim_hidden",
                "text_accuracy": "text",
                "implicit_excess": "excess",
                "excess_ci_low": "lo",
                "excess_ci_high": "hi",
                "excess_delimiter_hidden": "excess_vs_delim",
            }
        ),
        f"wrote {out}/probe_results.parquet. {cfg.samples} samples x {cfg.data_seeds} data seeds ({n_val} validation "
        f"in all), {cfg.train.seeds} probe seeds, probes {','.join(cfg.probes)}; chance 0.100; accuracy = normal "
        "world; excess = normal - restart [95% CI over samples, probe and data seeds]; causal_control is a check "
        f"against chance (Bonferroni); {improving} row(s) still improving at the stop.",
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
    threads: int = opt.threads(),
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
    threads: int = opt.threads(),
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
