"""Markdown table of `probe passcode --json` outputs: variant x checkpoint x task accuracy x channel decomposition.

python scripts/toy_variant_table.py runs/pp/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def main(paths: list[str]) -> None:
    print(
        "| model | checkpoint | task acc. (exact) | direct normal | masked +1 normal | restart | text probe "
        "(ceiling) | implicit excess [95% CI] | n val | causal ctrl |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in paths:
        rows = json.loads(Path(p).read_text())
        by = {(r["condition"], r["distance"]): r for r in rows if r["probe"] == "mlp"}
        m, d, c = by.get(("masked", 1)), by.get(("direct", 0)), by.get(("causal_control", -1))
        if m is None:
            continue
        print(
            f"| {m['model']} | {m['checkpoint']} | {pct(m['task_accuracy'])} | {pct(d and d['accuracy'])} | "
            f"{pct(m['accuracy'])} [{pct(m['ci_low'])}, {pct(m['ci_high'])}] | {pct(m['restart_accuracy'])} | "
            f"{pct(m['text_accuracy'])} ({pct(m['text_ceiling'])}) | {100 * m['implicit_excess']:+.1f} "
            f"[{100 * m['excess_ci_low']:+.1f}, {100 * m['excess_ci_high']:+.1f}] | {m['n_val']} | "
            f"{pct(c and c['accuracy'])} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
