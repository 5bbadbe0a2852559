"""Channel decomposition of toy training runs, per checkpoint: masked +1, last layer, every world the task has.

For each ``RUN[:CKPT,CKPT...]`` (a ``memento-lens toy train`` run directory; default checkpoints: the
initialisation and the last one saved) this runs :func:`memento_lens.probes.passcode.run_passcode` on the
checkpoint directory (conditions ``masked`` at distance 1 on the last layer, MLP probe, the probes' own
stopping rule) and writes ``OUT/<run name>/<checkpoint>.json``: the result rows (normal / restart / text and
the on-distribution references with their implicit excess and paired CIs), the run's ``info`` and the
checkpoint's task accuracy from its ``checkpoint.json`` (held-out memento exact-match and per digit).
A checkpoint whose output exists is skipped, so an interrupted sweep resumes. Tables:
``scripts/toy_variant_table.py OUT/*/*.json``.

    nice -n 19 env OMP_NUM_THREADS=1 python scripts/toy_variant_eval.py RUN ... --out DIR --samples 4000 --seeds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path


def checkpoints_of(run: Path) -> list[str]:
    """Saved ``step-*`` checkpoints of a training run in training order, then ``final`` (the last step, which
    has no ``step-*`` folder of its own) when the run completed."""
    steps = sorted(p.name for p in run.iterdir() if p.name.startswith("step-") and (p / "config.json").exists())
    return steps + (["final"] if (run / "final" / "config.json").exists() else [])


def task_accuracy(ckpt: Path) -> dict:
    info = json.loads((ckpt / "checkpoint.json").read_text())
    keys = ("step", "step_name", "epoch", "memento_exact", "memento_digit", "vanilla_exact", "eval_sequences", "dtype")
    return {k: info.get(k) for k in keys}


def evaluate(ckpt: Path, args) -> dict:
    import torch
    from memento_lens.probes.passcode import PasscodeConfig, run_passcode
    from memento_lens.probes.train import TrainConfig

    torch.set_num_threads(1)
    extra = {} if args.data_seeds is None else {"data_seeds": args.data_seeds}
    cfg = PasscodeConfig(
        model=str(ckpt),
        samples=args.samples,
        layers=(-1,),
        all_layers=False,
        distances=(1,),
        conditions=tuple(args.conditions.split(",")),
        probes=("mlp",),
        control=False,
        seed=args.seed,
        train=dataclasses.replace(
            TrainConfig(), seeds=args.seeds, **({} if args.patience is None else {"patience": args.patience})
        ),
        **extra,
    )
    acc = task_accuracy(ckpt)
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = run_passcode(cfg, checkpoint=ckpt.name, task_accuracy=float(acc["memento_exact"]))
    rows = json.loads(res.rows.to_json(orient="records"))
    return {
        "run": ckpt.parent.name,
        "checkpoint": ckpt.name,
        "task": acc,
        "config": cfg.to_dict(),
        "rows": rows,
        "info": {k: v for k, v in res.info.items() if _jsonable(v)},
        "skips": [str(s) for s in res.skips],
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return not (isinstance(v, float) and math.isnan(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="RUN or RUN:CKPT,CKPT (step-NNNNNN, final; 'init', 'last')")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=2, help="probe seeds per fit")
    ap.add_argument("--data-seeds", type=int, default=None, help="independent data replicates (probes' default)")
    ap.add_argument("--seed", type=int, default=0, help="data seed")
    ap.add_argument("--conditions", default="masked")
    ap.add_argument("--patience", type=int, default=None, help="the stopping rule's patience (probes' default)")
    args = ap.parse_args()
    for spec in args.runs:
        run, _, names = spec.partition(":")
        run = Path(run)
        saved = checkpoints_of(run)
        wanted = names.split(",") if names else ["init", "last"]
        resolved = []
        for w in wanted:
            name = {"init": saved[0], "last": saved[-1]}.get(w, w)
            if name not in saved:
                raise SystemExit(f"{run}: no checkpoint {w!r} (saved: {', '.join(saved)})")
            resolved.append(name)
        for name in dict.fromkeys(resolved):
            dst = args.out / run.name / f"{name}.json"
            if dst.exists():
                print(f"{dst}: exists, skipped", flush=True)
                continue
            out = evaluate(run / name, args)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1))
            tmp.replace(dst)
            print(f"{dst}: {out['wall_s']:.0f} s wall, {out['cpu_s']:.0f} s CPU", flush=True)


if __name__ == "__main__":
    main()
