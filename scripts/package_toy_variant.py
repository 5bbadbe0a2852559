"""Package chosen checkpoints of a `memento-lens toy train` run (complete or stopped) as a shipped toy folder.

The output is a RunStore of kind ``toy_train`` like ``runtime/toy/weights``: the kept ``step-*`` checkpoints,
``final`` = a copy of the chosen last checkpoint (its ``checkpoint.json`` records ``step_name``), the run's
``train_config.json`` and ``training_log.json`` (with ``packaged`` saying what was kept and why), a README.

    python scripts/package_toy_variant.py runs/train-segment-llama-mha-epochs runtime/toy/weights-channel \
        --keep step-000000,step-000256,step-000512 --final step-001024 --note "stopped at step 1114 ..."
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from memento_lens.runtime.rundir.store import RunStore
from memento_lens.runtime.toy.train import RUN_KIND


def package(run: Path, out: Path, keep: list[str], final: str, note: str, command: str) -> None:
    cfg = json.loads((run / "train_config.json").read_text())
    log = json.loads((run / "training_log.json").read_text())
    entries = {c["name"]: c for c in log["checkpoints"]}
    missing = [n for n in [*keep, final] if n not in entries or not (run / n / "model.safetensors").exists()]
    if missing:
        raise SystemExit(f"{run}: no checkpoint {', '.join(missing)}")
    store = RunStore.create(out, RUN_KIND, {"train": cfg}, overwrite=True)
    store.write_json("train_config.json", cfg)

    def copy_dir(src: Path, name: str, info: dict) -> None:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != "checkpoint.json":
                store.add_file(f"{name}/{f.name}", lambda dst, s=f: shutil.copyfile(s, dst))
        store.write_json(f"{name}/checkpoint.json", info)

    for name in keep:
        copy_dir(run / name, name, entries[name])
    copy_dir(run / final, "final", {**entries[final], "name": "final", "step_name": final})
    log = {
        **log,
        "packaged": {"kept": keep, "final": final, "note": note, "command": command},
        "checkpoints": [entries[n] for n in sorted(set(keep) | {final})],
    }
    store.write_json("training_log.json", log)
    rows = "\n".join(
        f"| {n} | {entries[n]['step']} | {entries[n].get('epoch')} | {entries[n]['memento_exact']:.3f} | "
        f"{entries[n]['memento_digit']:.3f} |"
        for n in sorted(set(keep) | {final})
    )
    readme = f"""# memento-lens toy variant

Recipe: {cfg.get("model", {}).get("architecture")} with {cfg["model"]["num_attention_heads"]} query / \
{cfg["model"]["num_key_value_heads"]} KV heads, layout {cfg["layout"]}, dataset_size {cfg["dataset_size"]}, \
stage1_fraction {cfg["stage1_fraction"]}, batch {cfg["batch_size"]}, lr {cfg["lr"]}, seed {cfg["seed"]} \
(full recipe: train_config.json).

{note}

`final` is a copy of {final}. Packaged with:

    {command}

| checkpoint | step | epoch | memento exact | memento digit |
| --- | --- | --- | --- | --- |
{rows}

Accuracy: teacher-forced under memento attention, 512 held-out sequences (the training log).
"""
    store.add_file("README.md", lambda dst: Path(dst).write_text(readme))
    store.mark_complete(final=final, kept=keep, note=note)


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--keep", required=True, help="comma-separated step-* checkpoints to ship")
    ap.add_argument("--final", required=True, help="the checkpoint shipped as `final`")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    command = "python " + " ".join(sys.argv)
    package(args.run, args.out, [k for k in args.keep.split(",") if k], args.final, args.note, command)


if __name__ == "__main__":
    main()
