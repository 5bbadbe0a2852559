"""Shared benchmark plumbing: each ``bench_<area>.py`` exposes ``run(quick: bool) -> list[BenchRow]``;
``run_all`` collects them into BENCHMARKS.md with the machine they ran on. Targets are ratios against a
baseline measured in the same run, never absolute timings in tests."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class BenchRow:
    """One measured quantity.

    Attributes:
        benchmark: short name, e.g. "vanilla decode vs model.generate".
        metric: what ``value`` is, e.g. "speed ratio", "tokens/s", "seconds".
        value: the measurement.
        target: human-readable target, e.g. ">= 1.0x" ("" if none).
        passed: whether the target is met (None if no target).
        note: baseline numbers, FLOP limits, sizes.
    """

    benchmark: str
    metric: str
    value: float
    target: str = ""
    passed: bool | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine() -> str:
    import os

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__} ({dev}), threads {torch.get_num_threads()}"
    )
