"""The passcode probing experiment (paper §6.2.2 / Appendix A.4.2) with its channel decomposition.

For every condition (direct, masked +k, causal control), layer (and all probed layers concatenated) and probe,
three probes are fitted on the same label-unique split and scored on the same validation samples:

* **normal**: memento K/V as the model caches them (the memento was written while its block was visible);
* **restart**: the same tokens with every memento recomputed without its block (the paper's restart mode), so
  the K/V hold only what the memento text says: the explicit channel;
* **text**: a probe on the one-hot identities of the memento text tokens, with the task's exact Bayes ceiling
  beside it where computable.

**implicit excess** = normal - restart, with a paired bootstrap CI over validation samples (``train.seeds``
probe seeds averaged per sample). The causal control (memento before the passcode's block) is a pipeline check:
it is at chance by the causal mask alone. Orchestration over checkpoints and run directories: :mod:`.sweep`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from memento_lens.runtime.rundir.schema import (
    FEATURE_TEXT,
    FEATURE_TEXT_TOKENS,
    PASSCODE_CHANCE,
    PROBE_CURVES,
    PROBE_RESULTS,
)

from .features import (
    CONDITIONS,
    Condition,
    MementoFeatures,
    ProbeInputError,
    Skip,
    extract_memento_kv,
    passcode_conditions,
    resolve_layers,
)
from .models import make_probe
from .real import TracePasscodeTask
from .tasks import PasscodeTask, ToyPasscodeTask
from .train import (
    FitTask,
    TrainConfig,
    control_labels,
    fit_batched,
    fit_logistic,
    label_unique_split,
    paired_bootstrap,
)

ALL_LAYERS = -1  # ``layer`` of the rows whose features concatenate every probed layer (the paper's "all layers")
WORLDS = ("normal", "restart")

# probe_results.parquet and probe_curves.parquet: columns defined once in runtime/rundir/schema.py. Each result
# row is one condition x distance x layer x head x probe: ``accuracy`` is the normal world (what the model really
# caches); ``restart_*`` the same tokens with every memento recomputed without its block (only what the memento
# text says); ``text_*`` a probe on the one-hot identities of the memento text tokens; ``implicit_excess`` =
# normal - restart with a paired bootstrap CI; ``role`` marks the causal control as the pipeline check it is.
RESULT_COLUMNS = PROBE_RESULTS.names
CURVE_COLUMNS = PROBE_CURVES.names
ROLES = {"direct": "measurement", "masked": "measurement", "causal_control": "pipeline_check"}


@dataclass(frozen=True)
class PasscodeConfig:
    """Everything that changes a passcode result (saved as the run's config).

    Attributes:
        model: ``toy``, ``toy@<checkpoint>``, a local HF path, or ``random:tiny``.
        task: ``toy`` (block digits are the passcode) or ``trace`` (substitute into ``trace``); ``auto`` picks
            ``toy`` for toy-vocabulary models.
        trace: Memento JSON trace for ``task=trace``.
        samples: sequences (the paper: 50K toy, 15K real).
        layers: layer indices (negative from the end); empty = all.
        all_layers: also probe the concatenation of the probed layers (``layer = -1`` in the rows).
        heads: KV heads probed one at a time in addition to all heads (-1).
        target_block: 0-based block holding the passcode (1 = the paper's T2).
        distances: masked distances k (memento of target + k).
        distance_layers: ``all`` or ``last``: layers for masked distances >= 2.
        positions: ``span`` (summary_start .. summary_end) or ``digits`` (toy memento digits only).
        probes: probe names (``mlp``, ``linear``).
        control: also fit the control task (selectivity; normal world, first seed).
        text: also fit the text-only probe (one-hot memento text identities).
    """

    model: str = "toy"
    task: str = "auto"
    trace: str | None = None
    samples: int = 50_000
    layers: tuple[int, ...] = ()
    all_layers: bool = True
    heads: tuple[int, ...] = ()
    conditions: tuple[str, ...] = CONDITIONS
    target_block: int = 1
    distances: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    distance_layers: str = "all"
    positions: str = "span"
    probes: tuple[str, ...] = ("mlp", "linear")
    control: bool = True
    text: bool = True
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"
    dtype: str = "float32"
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


# The demo preset (target < 1 min on 2 cores): first and last layer (layer 0 is the built-in zero-excess check),
# masked +1/+2 only, so the replay stops after memento 3; one probe seed, a 30-epoch cap (hit_cap says when hit).
QUICK = dict(
    samples=2000,
    layers=(0, -1),
    all_layers=False,
    distances=(1, 2),
    train=TrainConfig(max_epochs=30, patience=3, batch_size=256, lr=2e-3, seeds=1, n_boot=300),
)


@dataclass
class PasscodeResult:
    """Result rows (``RESULT_COLUMNS``), learning curves (``CURVE_COLUMNS``), skipped requests, accounting."""

    rows: pd.DataFrame
    skips: list[Skip]
    info: dict[str, Any]
    curves: pd.DataFrame = field(default_factory=PROBE_CURVES.empty)


# -- features of both worlds and of the text --------------------------------------------------------------------
@dataclass
class PasscodeFeatures:
    """What the probes read: memento K/V per world, the memento text tokens, labels, and the text ceilings.

    Attributes:
        worlds: ``{"normal" | "restart": MementoFeatures}`` over the same samples.
        text_tokens: ``{memento_block: [n, n_text]}`` int64 token ids of the memento text channel.
        ceilings: ``{memento_block: exact text ceiling}`` (absent where not computable).
    """

    worlds: dict[str, MementoFeatures]
    text_tokens: dict[int, torch.Tensor]
    ceilings: dict[int, float]
    task: str = ""

    @property
    def labels(self) -> np.ndarray:
        return self.worlds["normal"].labels.numpy()

    def save(self, store, prefix: str = "features") -> None:
        for world, feats in self.worlds.items():
            feats.save(store, f"{prefix}/{world}")
        store.write_tensors(
            FEATURE_TEXT_TOKENS.at(prefix=prefix), {f"memento{mb}": t for mb, t in self.text_tokens.items()}
        )
        store.write_json(
            FEATURE_TEXT.at(prefix=prefix),
            {"task": self.task, "ceilings": {str(k): v for k, v in self.ceilings.items()}},
        )

    @classmethod
    def load(cls, store, prefix: str = "features") -> "PasscodeFeatures":
        worlds = {w: MementoFeatures.load(store, f"{prefix}/{w}") for w in WORLDS}
        text = store.read_tensors(FEATURE_TEXT_TOKENS.at(prefix=prefix))
        meta = store.read_json(FEATURE_TEXT.at(prefix=prefix))
        return cls(
            worlds=worlds,
            text_tokens={int(k.removeprefix("memento")): v for k, v in text.items()},
            ceilings={int(k): float(v) for k, v in meta["ceilings"].items()},
            task=meta.get("task", ""),
        )


def text_features(tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[n, n_text]`` token ids -> ``[n, sum_p values_p]`` float32 one-hot of each position's observed values.

    Only values that occur at a position get a column (a position that never varies contributes one constant
    column, which standardisation turns into zeros).
    """
    ids = np.asarray(tokens, dtype=np.int64)
    cols = []
    for p in range(ids.shape[1]):
        _, inv = np.unique(ids[:, p], return_inverse=True)
        cols.append(np.eye(int(inv.max()) + 1, dtype=np.float32)[inv])
    return torch.from_numpy(np.concatenate(cols, axis=1) if cols else np.zeros((len(ids), 0), np.float32))


def make_task(cfg: PasscodeConfig, loaded) -> PasscodeTask:
    """The passcode task for ``cfg`` (the one place that chooses an implementation; see :mod:`.tasks`)."""
    kind = cfg.task
    if kind == "auto":
        from memento_lens.runtime.toy.task import VOCAB

        toy_vocab = loaded is not None and loaded.model.config.vocab_size <= len(VOCAB) + 1
        kind = "toy" if cfg.model.startswith("toy") or toy_vocab else "trace"
    if kind not in TASKS:
        raise ProbeInputError(f"--task must be one of auto, {', '.join(TASKS)}; got {cfg.task!r}")
    return TASKS[kind](cfg, loaded)


def _toy_task(cfg: PasscodeConfig, loaded) -> PasscodeTask:
    from memento_lens.runtime.toy.task import layout_of

    return ToyPasscodeTask(
        target=cfg.target_block, positions=cfg.positions, layout=layout_of(loaded.model) if loaded is not None else None
    )


def _trace_task(cfg: PasscodeConfig, loaded) -> PasscodeTask:
    if cfg.trace is None:
        raise ProbeInputError(
            "--trace is required for a real model (a Memento JSON trace, e.g. ../shared/data/memento_example_math.json)"
        )
    if cfg.positions != "span":
        raise ProbeInputError("--positions digits applies to the toy only; real mementos use their span")
    return TracePasscodeTask(
        cfg.trace, loaded.tokenizer, loaded.require_tokens(), cfg.target_block, masking=loaded.masking
    )


TASKS: dict[str, Callable[[PasscodeConfig, Any], PasscodeTask]] = {"toy": _toy_task, "trace": _trace_task}


def plan(cfg: PasscodeConfig, n_layers: int, conds: list[Condition]) -> tuple[list[tuple[Condition, int]], list[int]]:
    """(condition, layer) pairs to probe (``ALL_LAYERS`` for the concatenation) and the resolved layers."""
    layers = resolve_layers(list(cfg.layers), n_layers)
    if cfg.distance_layers not in ("last", "all"):
        raise ProbeInputError(f"--distance-layers must be 'last' or 'all', got {cfg.distance_layers!r}")
    sets = list(layers) + ([ALL_LAYERS] if cfg.all_layers and len(layers) > 1 else [])
    far = sets if cfg.distance_layers == "all" else layers[-1:]
    pairs = [(c, ly) for c in conds for ly in (far if c.distance >= 2 else sets)]
    return pairs, layers


def extract_features(
    task: PasscodeTask,
    model: torch.nn.Module,
    samples,
    memento_blocks: list[int],
    layers: list[int],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PasscodeFeatures:
    """K/V at ``memento_blocks``' positions in the normal and the restart world (one batched replay each)."""
    pos = {mb: task.memento_positions(mb) for mb in memento_blocks}
    worlds = {}
    for world in WORLDS:
        worlds[world] = extract_memento_kv(
            model,
            samples.token_ids,
            task.visibility(world),
            pos,
            layers,
            samples.labels,
            wanted=[(mb, ly) for mb in memento_blocks for ly in layers],
            batch_size=batch_size,
            device=device,
            prefix_len=task.shared_prefix_len,
            progress=(lambda d, w=world: progress(f"features ({w})", d, len(samples.labels))) if progress else None,
        )
    ids = np.asarray(samples.token_ids)
    text = {mb: torch.from_numpy(ids[:, task.text_positions(mb)].copy()) for mb in memento_blocks}
    ceilings = {}
    for mb in memento_blocks:
        c = task.text_ceiling(Condition("", mb - task.target_block, mb))
        if c is not None:
            ceilings[mb] = float(c)
    return PasscodeFeatures(worlds=worlds, text_tokens=text, ceilings=ceilings, task=task.name)


# -- probing ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """One probe fit: features of (memento block, layer, head) in ``world`` (``text``: memento text identities;
    ``control``: normal-world features with the control relabelling)."""

    condition: Condition
    layer: int
    head: int
    probe: str
    world: str
    seed: int

    @property
    def feature_key(self) -> tuple:
        if self.world == "text":
            return ("text", self.condition.memento_block)
        world = "normal" if self.world == "control" else self.world
        return (world, self.condition.memento_block, self.layer, self.head)


def _feature(feats: PasscodeFeatures, key: tuple, layers: list[int]) -> torch.Tensor:
    if key[0] == "text":
        return text_features(feats.text_tokens[key[1]])
    world, mb, layer, head = key
    f = feats.worlds[world]
    if layer == ALL_LAYERS:
        return torch.cat([f.matrix(mb, ly, head) for ly in layers], dim=1)
    return f.matrix(mb, layer, head)


def probe_features(
    feats: PasscodeFeatures,
    cfg: PasscodeConfig,
    pairs: list[tuple[Condition, int]],
    layers: list[int],
    *,
    model_name: str = "",
    checkpoint: str = "",
    task_accuracy: float = float("nan"),
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Fit every probe of the plan on both worlds and the text, batched; return (rows, curves, info)."""
    labels = feats.labels
    train_idx, val_idx = label_unique_split(labels, cfg.train.val_frac, cfg.seed)
    fit_rel, stop_rel = label_unique_split(labels[train_idx], cfg.train.stop_frac, cfg.seed + 1)
    fit_idx, stop_idx = train_idx[fit_rel], train_idx[stop_rel]
    label_sets = [labels, control_labels(labels, cfg.seed)]
    seeds = [cfg.seed + s for s in range(max(1, cfg.train.seeds))]
    heads = [-1, *cfg.heads]
    results: dict[_Job, tuple[np.ndarray, int, bool, np.ndarray]] = {}
    curve_rows: list[dict] = []
    conds = list(dict.fromkeys(c for c, _ in pairs))
    total = len(conds) * len(cfg.probes)
    done = 0
    for cond in conds:
        for probe_name in cfg.probes:
            jobs: list[_Job] = []
            for c, layer in pairs:
                if c != cond:
                    continue
                for head in heads:
                    for seed in seeds:
                        jobs += [_Job(cond, layer, head, probe_name, w, seed) for w in WORLDS]
                    if cfg.control:
                        jobs.append(_Job(cond, layer, head, probe_name, "control", seeds[0]))
            if cfg.text:
                jobs += [_Job(cond, ALL_LAYERS, -1, probe_name, "text", seed) for seed in seeds]
            _fit_jobs(jobs, feats, layers, label_sets, (fit_idx, stop_idx, val_idx), cfg, results)
            done += 1
            if progress:
                progress("probes", done, total)
    for job, (_, epochs, _, curve) in results.items():
        points = curve[:epochs]  # lbfgs linear probes: one point at their final iteration
        for e, (loss, acc) in enumerate(points, start=epochs - len(points) + 1):
            curve_rows.append(
                {
                    "model": model_name,
                    "checkpoint": checkpoint,
                    "condition": job.condition.name,
                    "distance": job.condition.distance,
                    "layer": job.layer,
                    "head": job.head,
                    "probe": job.probe,
                    "world": job.world,
                    "seed": job.seed,
                    "epoch": e,
                    "train_loss": float(loss),
                    "stop_accuracy": float(acc),
                }
            )
    rows = []
    for cond, layer in pairs:
        for head in heads:
            for probe_name in cfg.probes:

                def get(world: str, seeds_=seeds, lay=layer, hd=head):
                    return [results[_Job(cond, lay, hd, probe_name, world, s)] for s in seeds_]

                normal, restart = get("normal"), get("restart")
                st = paired_bootstrap(
                    np.stack([r[0] for r in normal]),
                    np.stack([r[0] for r in restart]),
                    cfg.train.n_boot,
                    seed=cfg.seed,
                )
                text = {"accuracy": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
                if cfg.text:
                    tr = get("text", lay=ALL_LAYERS, hd=-1)
                    text = paired_bootstrap(np.stack([r[0] for r in tr]), None, cfg.train.n_boot, seed=cfg.seed)
                ctrl = float("nan")
                fits = normal + restart
                if cfg.control:
                    c = results[_Job(cond, layer, head, probe_name, "control", seeds[0])]
                    ctrl = float(c[0].mean())
                    fits.append(c)
                rows.append(
                    {
                        "model": model_name,
                        "checkpoint": checkpoint,
                        "task": feats.task,
                        "condition": cond.name,
                        "role": ROLES[cond.name],
                        "distance": cond.distance,
                        "layer": layer,
                        "head": head,
                        "probe": probe_name,
                        "seed": cfg.seed,
                        "n_seeds": len(seeds),
                        "n_train": len(train_idx),
                        "n_val": len(val_idx),
                        "accuracy": st["accuracy"],
                        "ci_low": st["ci_low"],
                        "ci_high": st["ci_high"],
                        "restart_accuracy": st["b_accuracy"],
                        "restart_ci_low": st["b_ci_low"],
                        "restart_ci_high": st["b_ci_high"],
                        "text_accuracy": text["accuracy"],
                        "text_ci_low": text["ci_low"],
                        "text_ci_high": text["ci_high"],
                        "text_ceiling": feats.ceilings.get(cond.memento_block, float("nan")),
                        "implicit_excess": st["diff"],
                        "excess_ci_low": st["diff_ci_low"],
                        "excess_ci_high": st["diff_ci_high"],
                        "excess_seed_sd": st["diff_seed_sd"],
                        "control_accuracy": ctrl,
                        "selectivity": st["accuracy"] - ctrl,
                        "epochs": int(max(f[1] for f in fits)),
                        "max_epochs": cfg.train.max_epochs,
                        "hit_cap": bool(any(f[2] for f in fits)),
                        "task_accuracy": task_accuracy,
                    }
                )
    info = {"n_fits": len(results), "split": {"train": len(train_idx), "val": len(val_idx), "stop": len(stop_idx)}}
    return PROBE_RESULTS.frame(rows), PROBE_CURVES.frame(curve_rows) if curve_rows else PROBE_CURVES.empty(), info


def _fit_jobs(jobs, feats, layers, label_sets, split, cfg: PasscodeConfig, results: dict) -> None:
    """Group jobs by feature width and fit each group as batched models (at most ``train.max_models`` at once)."""
    cache: dict[tuple, torch.Tensor] = {}
    by_width: dict[int, list[_Job]] = {}
    for job in jobs:
        if job.feature_key not in cache:
            cache[job.feature_key] = _feature(feats, job.feature_key, layers)
        by_width.setdefault(int(cache[job.feature_key].shape[1]), []).append(job)
    probe = make_probe(jobs[0].probe)
    fit_idx, stop_idx, val_idx = split
    for group in by_width.values():
        for s in range(0, len(group), cfg.train.max_models):
            chunk = group[s : s + cfg.train.max_models]
            keys = list(dict.fromkeys(j.feature_key for j in chunk))
            tasks = [FitTask(keys.index(j.feature_key), int(j.world == "control"), j.seed) for j in chunk]
            feats_k = [cache[k] for k in keys]
            if probe.name == "linear" and cfg.train.linear_solver == "lbfgs":
                train_idx = np.sort(np.concatenate([fit_idx, stop_idx]))  # no early stopping: all training data
                res = fit_logistic(feats_k, label_sets, tasks, train_idx, val_idx, cfg.train)
            else:
                res = fit_batched(
                    probe, feats_k, label_sets, tasks, fit_idx, stop_idx, val_idx, cfg.train, device=cfg.device
                )
            for i, job in enumerate(chunk):
                results[job] = (res.correct[i], int(res.epochs[i]), bool(res.hit_cap[i]), res.curves[i])


def run_passcode(
    cfg: PasscodeConfig,
    loaded=None,
    *,
    task: PasscodeTask | None = None,
    features: PasscodeFeatures | None = None,
    checkpoint: str = "",
    task_accuracy: float = float("nan"),
    on_features: Callable[[PasscodeFeatures], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PasscodeResult:
    """Run the experiment on one model: features of both worlds (or ``features`` from a cache), then probes.

    Args:
        cfg: the experiment config.
        loaded: a :class:`memento_lens.runtime.model.LoadedModel` (loaded from ``cfg.model`` when None).
        task: the passcode task (default :func:`make_task`).
        features: reuse cached features (no model forward); must cover the planned pairs.
        checkpoint, task_accuracy: recorded in every row (toy checkpoints sweep).
        on_features: called once with freshly extracted features (to cache them).
        progress: ``progress(stage, done, total)``.
    """
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if features is None:
        if loaded is None:
            from memento_lens.runtime.model import load_model

            loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        model = loaded.model
        n_layers = int(model.config.num_hidden_layers)
        task = task or make_task(cfg, loaded)
        conds, skips = task.conditions(cfg.distances, cfg.conditions)
        pairs, layers = plan(cfg, n_layers, conds)
        t1 = time.perf_counter()
        samples = task.samples(cfg.samples, cfg.seed)
        blocks = sorted({c.memento_block for c, _ in pairs})
        features = extract_features(
            task, model, samples, blocks, layers, batch_size=cfg.batch_size, device=cfg.device, progress=progress
        )
        info.update(task.info)
        info["feature_seconds"] = time.perf_counter() - t1
        info["n_layers"] = n_layers
        if on_features is not None:
            on_features(features)
    else:
        normal = features.worlds["normal"]
        n_layers = max(normal.layers()) + 1
        n_blocks = max(mb for mb, _ in normal.kv) + 1
        conds, skips = passcode_conditions(cfg.target_block, n_blocks, cfg.distances, cfg.conditions)
        pairs, layers = plan(cfg, n_layers, conds)
        missing = [
            (c.memento_block, ly)
            for c, lay in pairs
            for ly in (layers if lay == ALL_LAYERS else [lay])
            if (c.memento_block, ly) not in normal.kv
        ]
        if missing:
            raise ProbeInputError(
                f"cached features lack (memento block, layer) {missing[:4]}; re-extract "
                "(drop --features-from) or request layers/distances the cache holds"
            )
        info["task"] = features.task
    info["layers"] = layers
    t2 = time.perf_counter()
    rows, curves, fit_info = probe_features(
        features,
        cfg,
        pairs,
        layers,
        model_name=cfg.model,
        checkpoint=checkpoint,
        task_accuracy=task_accuracy,
        progress=progress,
    )
    info.update(fit_info)
    info["probe_seconds"] = time.perf_counter() - t2
    info["seconds"] = time.perf_counter() - t0
    info["n_samples"] = int(len(features.labels))
    return PasscodeResult(rows=rows, skips=skips, info=info, curves=curves)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """A small JSON summary per condition/probe: normal, restart, text and implicit excess by layer and distance."""
    out: dict[str, Any] = {"chance": PASSCODE_CHANCE}
    cols = ["accuracy", "restart_accuracy", "text_accuracy", "implicit_excess", "excess_ci_low", "excess_ci_high"]
    for (cond, probe), g in df[df["head"] == -1].groupby(["condition", "probe"]):
        last = g[g["layer"] >= 0]["layer"].max()
        out.setdefault(cond, {})[probe] = {
            "role": ROLES.get(cond, ""),
            "by_layer": {
                ("all" if int(r.layer) == ALL_LAYERS else str(int(r.layer))): {c: float(getattr(r, c)) for c in cols}
                for r in g[g["distance"] <= 1].itertuples()
            },
            "by_distance": {
                str(int(r.distance)): {c: float(getattr(r, c)) for c in cols} for r in g.itertuples() if r.layer == last
            },
        }
    return out
