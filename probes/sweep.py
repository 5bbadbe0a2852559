"""The passcode sweep over checkpoints: load each model, extract (or reuse cached) features of both worlds, probe,
and write the run (``probe_results.parquet``, ``probe_curves.parquet``, ``passcode_summary.json``, features).

The CLI (``memento-lens probe passcode``) only parses options and prints what :func:`run_sweep` returns.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .features import ProbeInputError
from .passcode import (
    CURVE_COLUMNS,
    RESULT_COLUMNS,
    PasscodeConfig,
    load_replicates,
    replicate_sets,
    run_passcode,
    save_replicates,
    summarize,
)


@dataclass
class SweepRun:
    """What a sweep wrote: rows (``RESULT_COLUMNS``), learning curves, skipped requests, per-model accounting."""

    rows: pd.DataFrame
    curves: pd.DataFrame
    skips: list[dict]
    info: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


def resolve_checkpoints(model: str, checkpoints: str | None) -> list[str]:
    """Model specs to sweep: ``[model]``, or ``toy@<name>`` per named (or ``all``) shipped toy checkpoint."""
    if not checkpoints:
        return [model]
    if not model.startswith("toy"):
        raise ProbeInputError("--checkpoints applies to the shipped toy model (--model toy)")
    from memento_lens.runtime.toy.shipped import list_checkpoints

    base = model.partition("@")[0]  # toy | toy-channel
    known = [str(c) for c in list_checkpoints(model=base)]
    wanted = known if checkpoints == "all" else [c.strip() for c in checkpoints.split(",")]
    bad = [c for c in wanted if c not in known]
    if bad:
        raise ProbeInputError(f"--checkpoints: unknown {', '.join(bad)}; known: {', '.join(known)}")
    return [f"{base}@{c}" for c in wanted]


def toy_task_accuracy(spec: str, model, device: str) -> float:
    """Task accuracy of a toy checkpoint: the training log's teacher-forced memento exact-match rate (memento
    attention, held-out sequences); evaluated here when the checkpoint does not record it."""
    from memento_lens.runtime.toy.shipped import checkpoint_info

    value = checkpoint_info(spec).get("memento_exact")
    if value is not None:
        return float(value)
    from memento_lens.runtime.toy.evaluate import evaluate_all

    return float(evaluate_all(model, n=1000, modes=("memento",), device=device)["memento"].exact)


def _load(spec: str, cfg: PasscodeConfig, device: str | None = None) -> tuple[Any, str, float]:
    """(loaded model, checkpoint name, task accuracy) for one model spec, on ``device`` (default ``cfg.device``)."""
    from memento_lens.runtime.model import load_model

    device = device or cfg.device
    loaded = load_model(spec, device=device, dtype=cfg.dtype)
    ckpt, task_acc = (spec.split("@", 1)[1] if "@" in spec else ""), float("nan")
    if spec.startswith("toy"):
        ckpt = ckpt or "final"
        task_acc = toy_task_accuracy(spec, loaded.model, device)
    elif (Path(spec) / "checkpoint.json").exists():  # a `toy train` checkpoint directory
        meta = json.loads((Path(spec) / "checkpoint.json").read_text())
        task_acc = float(meta.get("memento_exact", float("nan")))
        ckpt = str(meta.get("name", Path(spec).name))
    return loaded, ckpt, task_acc


def run_sweep(
    cfg: PasscodeConfig,
    store,
    specs: Sequence[str] | None = None,
    *,
    features_from: str | Path | None = None,
    cache_features: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    sharding: Any = None,
) -> SweepRun:
    """Probe every model in ``specs`` (default ``[cfg.model]``) and write the run into ``store`` (a RunStore).

    Args:
        features_from: a run directory whose cached features are re-probed (no model is loaded).
        cache_features: save each model's features (every world and the text) under
            ``features/<checkpoint>/data-<d>`` per data replicate.
        sharding: a :class:`memento_lens.runtime.cluster.Sharding` to extract features on Ray model actors (its
            accounting is in each model's ``info["sharding"]``, in ``passcode_summary.json``).
    """
    from memento_lens.runtime.rundir import schema
    from memento_lens.runtime.rundir.store import RunStore

    if store.reused:  # this same sweep's complete run (RunStore.create found it): its results, nothing recomputed
        summary = store.read_json(schema.PASSCODE_SUMMARY.path)
        return SweepRun(
            rows=store.read_table(schema.PROBE_RESULTS),
            curves=store.read_table(schema.PROBE_CURVES),
            skips=summary.get("skipped", []),
            info=summary.get("info", {}),
            summary=summary,
        )
    with store:  # a failure before anything is written (e.g. a bad --distances) leaves no run behind
        specs = list(specs or [cfg.model])
        frames, curves, skips, infos = [], [], [], {}
        for spec in specs:
            run_cfg = dataclasses.replace(cfg, model=spec)
            feats, loaded, ckpt, task_acc = None, None, "", float("nan")
            if features_from is not None:
                src = RunStore.open(features_from)
                found = replicate_sets(src.manifest.files)  # features[/<checkpoint>] -> its data-<d> replicates
                if not found:
                    raise ProbeInputError(
                        f"--features-from {features_from}: no cached passcode features "
                        f"({schema.FEATURE_TEXT.at(prefix=schema.features_prefix('<checkpoint>') + '/data-<d>')}); "
                        "run `probe passcode` with --cache-features first"
                    )
                prefix = schema.features_prefix() if schema.features_prefix() in found else sorted(found)[-1]
                ckpt = prefix.partition("/")[2]
                feats = load_replicates(src, found[prefix])
            else:
                # sharded: the actors load their own copies where Ray puts them; this one only plans, on CPU
                sharded = sharding is not None and sharding.sharded
                loaded, ckpt, task_acc = _load(spec, cfg, "cpu" if sharded else None)
            prefix = schema.features_prefix(ckpt)
            on_feat = (lambda f, p=prefix: save_replicates(store, f, p)) if cache_features and feats is None else None
            res = run_passcode(
                run_cfg,
                loaded,
                features=feats,
                checkpoint=ckpt,
                task_accuracy=task_acc,
                on_features=on_feat,
                progress=(lambda s, d, t, c=ckpt: progress(f"{c} {s}".strip(), d, t)) if progress else None,
                sharding=sharding,
            )
            frames.append(res.rows)
            curves.append(res.curves)
            skips += [s.to_dict() for s in res.skips]
            infos[spec] = res.info
        df = pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]
        cv = pd.concat(curves, ignore_index=True)[CURVE_COLUMNS]
        store.write_table(schema.PROBE_RESULTS, df)
        store.write_table(schema.PROBE_CURVES, cv)
        summary = {"summary": summarize(df), "skipped": skips, "info": infos}
        store.write_json(schema.PASSCODE_SUMMARY.path, summary)
        store.mark_complete(rows=len(df), chance=schema.PASSCODE_CHANCE)
    return SweepRun(rows=df, curves=cv, skips=skips, info=infos, summary=summary)
