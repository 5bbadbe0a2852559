"""The CLI's shared options: each spelling, default and help text defined once, used by every command.

Each factory returns a fresh ``typer.Option`` (typer keeps per-parameter state). Values are checked by the
library (:mod:`memento_lens.runtime.validate`), so Python callers get the same errors as the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

MODEL_HELP = (
    "Local HF checkpoint dir, 'toy', 'toy@<ckpt>', a real preset ('smollm2-135m': the memento tokens are added on "
    "load, as `mementify` saves them), or 'random:tiny' / 'random:bench' / 'random:llama-tiny' / 'random:toy'."
)
DEVICE_HELP = "torch device: cpu, cuda, cuda:N or mps (checked against this torch before any work)."
DTYPE_HELP = "Precision: float32, float64, bfloat16, float16, or auto (the checkpoint's own)."
BLOCK_NUMBERING = (
    "Blocks are numbered from 0 here (as KVKey.block and the run tables); the Memento JSON block_idx is 1-based."
)
MASK_HELP = (
    "Evict the block delimiters with the block (--mask-delimiters, Phi-4 style) or keep them visible "
    "(--keep-delimiters, Qwen3/OLMo3 style)."
)


def show_progress() -> bool:
    """Bars only on an interactive stderr (logs and captured output stay clean; stdout is never used)."""
    import sys

    return sys.stderr.isatty()


def flag(decls: str, help: str, default: bool = False) -> Any:
    """A boolean flag (``--x`` or ``--x/--no-x``): shown without a value in --help, given without one."""
    return typer.Option(default, decls, help=help, show_default="/" in decls)


def model(default: str | None = "toy", extra: str = "") -> Any:
    return typer.Option(default, "--model", help=(extra + " " if extra else "") + MODEL_HELP)


def device() -> Any:
    return typer.Option("cpu", "--device", help=DEVICE_HELP)


def dtype(default: str | None = None) -> Any:
    return typer.Option(default, "--dtype", help=DTYPE_HELP + ("" if default else " Default: the model's own."))


def seed() -> Any:
    return typer.Option(0, "--seed", help="Random seed (sampling, toy sequences, random models).")


def threads(default: int = 0) -> Any:
    return typer.Option(default, "--threads", help="torch CPU threads (0: torch's default).")


def out(default: Path | None, what: str = "Run directory to write.") -> Any:
    return typer.Option(default, "--out", "-o", help=what)


def overwrite() -> Any:
    return flag("--overwrite", "Replace an existing output (another run directory or file) instead of refusing.")


def resume() -> Any:
    return flag("--resume", "Continue an incomplete run of the same config in --out, keeping its finished parts.")


def batch_size(default: int, unit: str = "sequences") -> Any:
    return typer.Option(default, "--batch-size", help=f"{unit.capitalize()} per forward batch (>= 1).")


def mask_delimiters(default_note: str) -> Any:
    """One spelling everywhere: a switch; None means the command's documented default (``default_note``)."""
    return typer.Option(None, "--mask-delimiters/--keep-delimiters", help=f"{MASK_HELP} {default_note}")


def keep() -> Any:
    return typer.Option(
        0,
        "--keep",
        help="keep_last_n_blocks: completed blocks kept visible (0 evicts each block on its memento; -1 = "
        "KEEP_ALL, never evict, is vanilla: refused with --mode memento/restart, use --mode vanilla).",
    )


def as_json() -> Any:
    return flag("--json", "Print JSON instead of a table.")


def strict() -> Any:
    return flag("--strict", "Fail on the first malformed trace (and on an empty input) instead of skipping it.")


def allow_unk() -> Any:
    return flag(
        "--allow-unk",
        "Accept traces where the tokenizer turns more than a small share of the text into <unk> (a tokenizer "
        "that does not fit the text; refused by default).",
    )


def layers(what: str = "Layers to capture") -> Any:
    return typer.Option(None, "--layers", help=f"{what}, comma-separated 0-based indices, e.g. 0,3 (default all).")


def capture() -> Any:
    return flag(
        "--capture/--no-capture",
        "Store memento K/V (and the other captures) in the run; on by default for generate and replay.",
        default=True,
    )


def evicted_block() -> Any:
    return flag("--evicted-block", "Also store each evicted block's K/V (restart variant).")


def attention_layers() -> Any:
    return typer.Option(
        None,
        "--attention-layers",
        help="Also store attention weights of these layers (comma-separated). Stored float16 (each weight "
        "within 2^-11 of itself) over the keys each query sees: 2 B x heads x visible keys per query and layer, "
        "i.e. per layer per 1K queries 2 KB x heads x cache size (SmolLM2, 9 heads, 1K-token cache: 18 MB); "
        "all queries of a 1K-token trace at most 1 MB per head per layer, a 4K one at most 16 MB per head.",
    )


def attention_queries() -> Any:
    return typer.Option(
        None,
        "--attention-queries",
        help="Query positions for --attention-layers (comma-separated; default: every position). Needs "
        "--attention-layers; a position beyond every trace is an error.",
    )


def port(default: int = 8501) -> Any:
    return typer.Option(default, "--port", help="Port to serve on (1-65535).")


def setup(threads: int, seed: int) -> None:
    """Every command's torch set-up, one rule: ``--threads`` (0: torch's default, else that many; checked) and
    the seed."""
    import torch

    from memento_lens.runtime.validate import check_int

    check_int(threads, "--threads", min=0)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)


# -- sharded replay (runtime/cluster.py) --------------------------------------------------------------------
def workers() -> Any:
    return typer.Option(
        0,
        "--workers",
        help="Model workers: 0/1 one process (no Ray); N > 1 starts a local Ray cluster with N model actors "
        "(with --ray-address: N actors there, 0 as many as it has room for). Needs the `ray` extra.",
    )


def ray_address() -> Any:
    return typer.Option(
        None,
        "--ray-address",
        help="Join a running Ray cluster (`ray start --head` on one node): auto, HOST:6379 or ray://HOST:10001. "
        "--out must be on a filesystem every node mounts.",
    )


def gpus_per_worker() -> Any:
    return typer.Option(0.0, "--gpus-per-worker", help="GPUs per Ray model actor (e.g. 1; 2 with --device-map auto).")


def device_map() -> Any:
    return typer.Option(
        None,
        "--device-map",
        help="auto: spread the model's layers over every device a process sees (accelerate), for a model larger "
        "than one GPU (in one process or per Ray actor).",
    )


def unit_size(default: int) -> Any:
    return typer.Option(
        default, "--unit-size", help="Traces per work unit (the grain of scheduling, failure and --resume)."
    )
