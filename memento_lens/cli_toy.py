"""CLI: ``memento-lens toy train`` and ``memento-lens toy eval`` (the embedded toy model)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import user_errors

toy_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    add_completion=False,
    help="The embedded toy model: train it from scratch, evaluate it.",
)


@toy_app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output run directory (checkpoints, log, config)."),
    variant: str = typer.Option(
        "toy", "--variant", help="Named recipe from runtime/toy/variants.py (default: the shipped toy)."
    ),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default: the shipped recipe)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    stage1_fraction: Optional[float] = typer.Option(
        None, "--stage1-fraction", help="Fraction of steps in stage 1 (causal)."
    ),
    seed: Optional[int] = typer.Option(None, help="Training seed."),
    checkpoints: Optional[str] = typer.Option(None, help="Comma-separated checkpoint steps."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (0 = leave as is)."),
    device: str = typer.Option("cpu", help="torch device."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train the toy model from scratch (defaults reproduce the shipped weights)."""
    from memento_lens.runtime.errors import OptionError
    from memento_lens.runtime.toy.train import train
    from memento_lens.runtime.toy.variants import variant as named_variant

    with user_errors():
        try:
            cfg = named_variant(variant)
        except ValueError as exc:
            raise OptionError(f"--variant: {exc}") from None
        overrides = {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "stage1_fraction": stage1_fraction,
            "seed": seed,
            "threads": threads,
        }
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        if checkpoints is not None:
            try:
                cfg.checkpoints = tuple(int(s) for s in checkpoints.split(",") if s.strip())
            except ValueError:
                raise OptionError(f"--checkpoints: expected comma-separated integers, got {checkpoints!r}") from None
        if cfg.steps < 1:
            raise OptionError("--steps must be >= 1")
        from memento_lens.runtime.validate import check_device, check_float, check_int

        check_int(cfg.batch_size, "--batch-size", min=1)
        if check_float(cfg.lr, "--lr") <= 0:
            raise OptionError(f"--lr must be > 0, got {cfg.lr:g}")
        check_float(cfg.stage1_fraction, "--stage1-fraction", min=0, max=1)
        if cfg.threads is not None:
            check_int(cfg.threads, "--threads", min=0)
        check_device(device, "--device")
        command = (
            "memento-lens toy " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("train") :])
            if "train" in sys.argv
            else None
        )
        result = train(cfg, out, overwrite=overwrite, progress=not quiet, command=command, device=device)
        if result.reused:
            typer.echo(f"{out}: already holds the complete run of this same command; nothing to do", err=True)
        last = result.checkpoints[-1]
        typer.echo(
            f"trained {result.n_parameters:,} parameters in {result.seconds / 60:.1f} min -> {out}; "
            f"memento exact {last['memento_exact']:.3f}"
        )


@toy_app.command("eval")
def eval_cmd(
    model: str = typer.Option("toy", "--model", help="toy, toy@<checkpoint>, or a training run directory."),
    n: int = typer.Option(1000, "--n", "-n", help="Held-out sequences."),
    seed: Optional[int] = typer.Option(None, help="Seed of the held-out sequences (default: the eval seed)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("cpu", help="torch device."),
    foreign: bool = typer.Option(
        False,
        "--foreign",
        help="Also score the foreign-block controls of the restart ablation (foreign, samesum; see RESULTS.md).",
    ),
) -> None:
    """Teacher-forced task accuracy under vanilla, memento and restart attention (and the foreign control)."""
    import torch

    from memento_lens.runtime.errors import OptionError
    from memento_lens.runtime.toy.evaluate import CONTROL_MODES, EVAL_SEED, MODES, evaluate_all
    from memento_lens.runtime.toy.shipped import load_toy

    with user_errors():
        if n < 1:
            raise OptionError("-n must be >= 1")
        from memento_lens.runtime.validate import check_device

        check_device(device, "--device")
        if foreign and n < 2:
            raise OptionError("--foreign needs -n >= 2 (foreign blocks come from another sequence)")
        m, _ = load_toy(model, device=device, dtype=torch.float32)
        modes = MODES + (CONTROL_MODES if foreign else ())
        acc = evaluate_all(m, n, seed=EVAL_SEED if seed is None else seed, device=device, modes=modes)
        if as_json:
            print(json.dumps({**{k: v.to_dict() for k, v in acc.items()}, "n": n}))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"toy task accuracy: {model} ({n} held-out sequences, teacher-forced)")
        table.add_column("attention")
        table.add_column("mementos exact", justify="right")
        table.add_column("memento digits", justify="right")
        for mode, a in acc.items():
            table.add_row(mode, f"{a.exact:.1%}", f"{a.digit:.1%}")
        Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(toy_app, name="toy")
