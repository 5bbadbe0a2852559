"""The main job's speed: ``memento-lens demo`` after set-up (target < 2 min on 2 cores), per step."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import BenchRow


def run(quick: bool = False) -> list[BenchRow]:
    from memento_lens.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_demo(Path(tmp) / "demo", overwrite=True).summary.to_dict()
        total = time.perf_counter() - t0
    steps = "; ".join(f"{k}: {v:.0f} s" for k, v in summary["timings_s"].items())
    return [
        BenchRow(
            benchmark="memento-lens demo --no-app (after set-up, imports excluded)",
            metric="seconds",
            value=total,
            target="< 120 s",
            passed=total < 120,
            note=steps,
        )
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
