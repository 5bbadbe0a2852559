"""Restart ablation and its controls on a toy model: teacher-forced memento digits of blocks 1..9.

Worlds (runtime/toy/evaluate.py): memento (normal keep 0), restart (earlier mementos' KV recomputed without
their blocks), foreign (earlier blocks replaced by another sequence's: KV computed with *a* block visible, the
memento text unchanged), samesum (earlier blocks replaced by other blocks with the same digit sum: KV computed
with a block visible, everything the text says still true). 95% bootstrap CIs over sequences.

    python scripts/toy_restart_controls.py --model toy -n 512 --json runs/restart_controls.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

MODES = ("memento", "restart", "foreign", "samesum")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("-n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=20260401)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from memento_lens.runtime.toy.evaluate import predicted_mementos
    from memento_lens.runtime.toy.shipped import load_toy
    from memento_lens.runtime.toy.task import layout_of, sample

    model = load_toy(args.model)[0]
    batch = sample(args.n, args.seed, layout_of(model))
    target = batch.token_ids[:, batch.layout.all_memento_digits()][:, 1:]  # blocks 1..9
    rng = np.random.default_rng(0)
    boot = rng.integers(0, args.n, size=(2000, args.n))
    for mode in MODES:
        t0 = time.perf_counter()
        right = predicted_mementos(model, batch, mode)[:, 1:] == target  # [n, 9, m]
        per_seq = right.mean(axis=(1, 2))
        exact = right.all(axis=2).mean(axis=1)
        row = {
            "model": args.model,
            "mode": mode,
            "n": args.n,
            "digit_acc": float(per_seq.mean()),
            "digit_ci": [float(np.percentile(per_seq[boot].mean(1), q)) for q in (2.5, 97.5)],
            "exact": float(exact.mean()),
            "exact_ci": [float(np.percentile(exact[boot].mean(1), q)) for q in (2.5, 97.5)],
            "per_block_digit": [float(x) for x in right.mean(axis=(0, 2))],
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"{args.model:28s} {mode:8s} digits {100 * row['digit_acc']:.1f}% "
            f"[{100 * row['digit_ci'][0]:.1f}, {100 * row['digit_ci'][1]:.1f}]  exact {100 * row['exact']:.1f}%"
        )
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
