"""Markdown table of toy channel decompositions: variant x checkpoint x task accuracy x worlds x implicit excess.

Inputs: ``scripts/toy_variant_eval.py`` outputs (``OUT/<run>/<checkpoint>.json``) or ``probe passcode --json``
lists. One line per masked +1 MLP row (the last layer unless ``--layer``): normal, restart, text (its exact
ceiling) and the on-distribution references (same_sum, foreign, delimiter_hidden; ``-`` where the run has
none), the implicit excess against each with its paired 95% CI, sample and seed counts and how the probes
stopped.

python scripts/toy_variant_table.py OUT/*/*.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REFERENCES = (
    ("restart", "implicit_excess", "excess"),
    *((w, f"excess_{w}", f"excess_{w}") for w in ("same_sum", "foreign", "delimiter_hidden")),
)


def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def signed(v, lo, hi) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def excess_cell(row: dict, key: str, ci: str) -> str:
    return signed(row.get(key), row.get(f"{ci}_ci_low"), row.get(f"{ci}_ci_high"))


def load(path: str) -> tuple[str, dict, list[dict]]:
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):  # probe passcode --json
        return (data[0]["model"] if data else path), {}, data
    return data["run"], data.get("task", {}), data["rows"]


def stopped(row: dict) -> str:
    parts = [f"{row.get('epochs')} ep"]
    if row.get("stopped_by"):
        parts.append(str(row["stopped_by"]))
    if row.get("still_improving"):
        parts.append("still improving")
    if row.get("hit_cap"):
        parts.append("cap")
    return ", ".join(parts)


def main(paths: list[str]) -> None:
    head = [
        "variant",
        "checkpoint",
        "task acc. exact (digits)",
        "masked +1 normal [95% CI]",
        "restart",
        "text (ceiling)",
        "same_sum",
        "foreign",
        "delimiter_hidden",
        "excess vs restart [95% CI]",
        "vs same_sum",
        "vs foreign",
        "vs delimiter_hidden",
        "n val x seeds x data seeds",
        "probes stopped",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for p in paths:
        run, task, rows = load(p)
        for m in rows:
            if m["probe"] != "mlp" or m["condition"] != "masked" or m["distance"] != 1:
                continue
            exact, digit = task.get("memento_exact", m.get("task_accuracy")), task.get("memento_digit")
            cells = [
                f"`{run}`",
                m["checkpoint"]
                + (f" (step {task['step']})" if m["checkpoint"] == "final" and task.get("step") else ""),
                f"{pct(exact)}% ({pct(digit)}%)",
                f"{pct(m['accuracy'])} [{pct(m['ci_low'])}, {pct(m['ci_high'])}]",
                pct(m.get("restart_accuracy")),
                f"{pct(m.get('text_accuracy'))} ({pct(m.get('text_ceiling'))})",
                pct(m.get("same_sum_accuracy")),
                pct(m.get("foreign_accuracy")),
                pct(m.get("delimiter_hidden_accuracy")),
                *(excess_cell(m, key, ci) for _, key, ci in REFERENCES),
                f"{m['n_val']} x {m.get('n_seeds')} x {m.get('n_data_seeds') or 1}",
                stopped(m),
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
