"""Resource guards: estimate what a job will need before it starts, and refuse with the estimate and the limit.

A command that can outgrow memory or disk (``generate --n 1000000000000`` once grew to 20 GB and was killed by the
kernel with no message) calls a ``*_estimate`` here and :func:`check_resources` before it builds anything large.
Estimates are upper bounds from the model's geometry (tokens x layers x bytes), never measurements; the message
says what was counted so a user can see why.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import OptionError

# Bytes a token costs in the run's tables (tokens/events/occupancy Parquet rows, compressed; measured on toy runs
# at ~10-20 B, rounded up) and in memory while its batch is held (ids, logits row pointer, roles, bookkeeping).
TABLE_BYTES_PER_TOKEN = 32
# The manifest records every prompt's token ids as JSON (~4 bytes each) and the driver holds them as Python ints.
PROMPT_BYTES_PER_TOKEN = 64
# Fraction of memory / free disk a job may plan to use; the rest is left to the system and to other work.
HEADROOM = 0.8


class ResourceError(OptionError):
    """The job would need more memory or disk than there is; the message gives the estimate and the limit."""


@dataclass(frozen=True)
class ResourceEstimate:
    """An upper bound on what a job needs.

    Attributes:
        what: the job, in the user's terms (``generate: 4 traces x (prompt 1 + 256 new tokens)``).
        memory_bytes: peak resident memory beyond the loaded model.
        disk_bytes: bytes written to the run directory.
        counted: how the numbers were made (shown in the refusal).
    """

    what: str
    memory_bytes: int
    disk_bytes: int
    counted: str


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of /proc/meminfo), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_disk(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system that would hold ``path`` (its nearest existing parent), or None."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_resources(
    est: ResourceEstimate,
    out: str | os.PathLike | None = None,
    *,
    memory_limit: int | None = None,
    disk_limit: int | None = None,
) -> ResourceEstimate:
    """Refuse (:class:`ResourceError`) when ``est`` exceeds :data:`HEADROOM` of the available memory or of the free
    disk under ``out``. ``memory_limit`` / ``disk_limit`` override what the machine reports (tests, schedulers)."""
    mem = memory_limit if memory_limit is not None else available_memory()
    disk = disk_limit if disk_limit is not None else (available_disk(out) if out is not None else None)
    if mem is not None and est.memory_bytes > HEADROOM * mem:
        raise ResourceError(
            f"{est.what}: needs about {human_bytes(est.memory_bytes)} of memory ({est.counted}); "
            f"{human_bytes(mem)} is available (limit {HEADROOM:.0%} of it). Make the job smaller (--n, "
            "--max-new-tokens, --batch-size) or split it."
        )
    if disk is not None and est.disk_bytes > HEADROOM * disk:
        raise ResourceError(
            f"{est.what}: needs about {human_bytes(est.disk_bytes)} of disk under {out} ({est.counted}); "
            f"{human_bytes(disk)} is free (limit {HEADROOM:.0%} of it). Capture less (--layers, --no-capture) "
            "or write elsewhere (--out)."
        )
    return est


def generation_estimate(
    model: Any,
    *,
    n_traces: int,
    prompt_tokens: int,
    max_new_tokens: int,
    batch_size: int,
    captures: Sequence[Any] = (),
) -> ResourceEstimate:
    """Upper bound for ``generate``: ``n_traces`` traces of at most ``prompt_tokens + max_new_tokens`` tokens.

    Memory: one batch's KV cache at full length (float32 on CPU), its logits row, and every prompt recorded in the
    manifest. Disk: the per-token tables, plus, with K/V captures, every token's K/V in float32 (an upper bound:
    memento K/V and evicted blocks are a share of the tokens).
    """
    import torch

    from .occupancy import kv_bytes_per_token

    n_traces, tokens = int(n_traces), int(prompt_tokens) + int(max_new_tokens)
    kv = kv_bytes_per_token(model, torch.float32)
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    batch = min(int(batch_size), n_traces)
    memory = batch * tokens * kv + batch * vocab * 4 * 2 + n_traces * int(prompt_tokens) * PROMPT_BYTES_PER_TOKEN
    captures_kv = bool(captures)
    per_token_disk = TABLE_BYTES_PER_TOKEN + (kv if captures_kv else 0)
    disk = n_traces * tokens * per_token_disk
    counted = (
        f"{n_traces:,} traces x {tokens:,} tokens; {human_bytes(kv)} of float32 K/V per token"
        + (", captured" if captures_kv else "")
        + f"; batches of {batch}"
    )
    what = f"generate: {n_traces:,} traces x (prompt {prompt_tokens} + {max_new_tokens} new tokens)"
    return ResourceEstimate(what, int(memory), int(disk), counted)


__all__ = [
    "ResourceError",
    "ResourceEstimate",
    "available_memory",
    "available_disk",
    "check_resources",
    "generation_estimate",
    "human_bytes",
    "HEADROOM",
]
