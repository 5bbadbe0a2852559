"""The passcode probing experiment (paper §6.2.2 / Appendix A.4.2) with its channel decomposition.

For every condition (direct, masked +k, causal control), layer (and all probed layers concatenated) and probe,
probes are fitted on the same label-unique split and scored on the same validation samples in every *world*
(:mod:`.tasks`): the same samples and labels, replayed with other tokens or another mask:

* **normal**: memento K/V as the model caches them (the memento was written while its block was visible);
* **restart**: the same tokens with every memento recomputed without its block (the paper's restart mode), so
  the K/V hold only what the memento text says: the explicit channel;
* on-distribution references, where the task can build them: **same_sum** (the block replaced by one with the
  same memento text), **foreign** (another passcode in the block) and **delimiter_hidden** (the block's kept
  delimiters hidden from every later token);
* **text**: a probe on the one-hot identities of the memento text tokens, with the task's exact Bayes ceiling
  beside it where computable.

**implicit excess** = normal - restart, and ``excess_<world>`` = normal - that reference, each with a paired
hierarchical bootstrap CI over validation samples, probe seeds and ``data_seeds`` independent data replicates
(each its own samples and split; separate random streams for data, split, worlds and probes). The causal
control (memento before the passcode's block) is a pass/fail check against chance, Bonferroni-corrected over the
check rows. Orchestration over checkpoints and run directories: :mod:`.sweep`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from memento_lens.runtime.rundir.schema import (  # noqa: F401  (the sentinels: part of the tables' contract, re-exported)
    ALL_HEADS,
    ALL_LAYERS,
    CAUSAL_DISTANCE,
    FEATURE_TEXT,
    FEATURE_TEXT_TOKENS,
    PASSCODE_CHANCE,
    PROBE_CURVES,
    PROBE_RESULTS,
    SENTINELS,
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
from .tasks import REFERENCE_WORLDS, WORLDS, PasscodeTask, ToyPasscodeTask
from .train import (
    FitTask,
    TrainConfig,
    chance_check,
    fit_batched,
    fit_logistic,
    fit_ridge,
    hierarchical_bootstrap,
    label_unique_split,
    text_control_labels,
)

MAX_DISTANCE = 7  # default masked distances: 1..7 where the task has them (the paper's)

# probe_results.parquet and probe_curves.parquet: columns defined once in runtime/rundir/schema.py. Each result
# row is one condition x distance x layer x head x probe: ``accuracy`` is the normal world (what the model really
# caches); ``restart_*`` the same tokens with every memento recomputed without its block (only what the memento
# text says); ``<world>_*`` / ``excess_<world>*`` the reference worlds; ``text_*`` a probe on the one-hot
# identities of the memento text tokens; ``implicit_excess`` = normal - restart with a paired bootstrap CI;
# ``role`` marks the causal control as the pipeline check it is and ``check`` says whether it passed.
RESULT_COLUMNS = PROBE_RESULTS.names
CURVE_COLUMNS = PROBE_CURVES.names
ROLES = {"direct": "measurement", "masked": "measurement", "causal_control": "pipeline_check"}
PROBE_KINDS = ("mlp", "linear")
# random streams: every draw of an experiment comes from SeedSequence([seed, data_seed, STREAM]) of its own
_DATA, _SPLIT, _STOP, _WORLD, _PROBE = 1, 2, 3, 4, 5


def stream_seed(seed: int, data_seed: int, stream: int, k: int = 0) -> int:
    """A 31-bit seed of one random stream (data, split, stop slice, world tokens, probe ``k``) of one data replicate."""
    return int(np.random.SeedSequence([int(seed), int(data_seed), int(stream), int(k)]).generate_state(1)[0] >> 1)


@dataclass(frozen=True)
class PasscodeConfig:
    """Everything that changes a passcode result (saved as the run's config). Invalid values raise
    :class:`ProbeInputError` naming the option, from Python as from the CLI.

    Attributes:
        model: ``toy``, ``toy@<checkpoint>``, a local HF path, or ``random:tiny``.
        task: ``toy`` (block digits are the passcode) or ``trace`` (substitute into ``trace``); ``auto`` picks
            ``toy`` for toy-vocabulary models.
        trace: Memento JSON trace for ``task=trace`` (refused for the toy task, which would ignore it).
        samples: sequences per data replicate (the paper: 50K toy, 15K real).
        data_seeds: independent data replicates (own samples, split, world draws and probe seeds each); every
            figure pools them.
        layers: layer indices (negative from the end); empty = all.
        all_layers: also probe the concatenation of the probed layers (``layer = ALL_LAYERS`` in the rows).
        heads: KV heads probed one at a time in addition to all heads (``head = ALL_HEADS``).
        worlds: reference worlds beside normal and restart (those the task cannot build are skipped and listed).
        target_block: 0-based block holding the passcode (1 = the paper's T2).
        distances: masked distances k (memento of target + k); empty = 1..7 where the task has them. A
            distance the task does not have is an error before anything runs.
        distance_layers: ``all`` or ``last``: layers for masked distances >= 2.
        positions: ``span`` (summary_start .. summary_end) or ``digits`` (toy memento digits only).
        probes: probe names (``mlp``, ``linear``).
        control: also fit the control task (labels a random function of the probed memento's text; normal world).
        text: also fit the text-only probe (one-hot memento text identities).
        batch_size: sequences per feature-extraction forward (clamped to ``samples``).
    """

    model: str = "toy"
    task: str = "auto"
    trace: str | None = None
    samples: int = 50_000
    data_seeds: int = 2
    layers: tuple[int, ...] = ()
    all_layers: bool = True
    heads: tuple[int, ...] = ()
    conditions: tuple[str, ...] = CONDITIONS
    worlds: tuple[str, ...] = REFERENCE_WORLDS
    target_block: int = 1
    distances: tuple[int, ...] = ()
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

    def __post_init__(self):
        def bad(msg: str):
            raise ProbeInputError(msg)

        if self.samples < 20:
            bad(f"--samples {self.samples}: need at least 20 for a train/validation split")
        if self.data_seeds < 1:
            bad(f"--data-seeds {self.data_seeds}: need at least 1")
        if self.batch_size < 1:
            bad(f"--batch-size {self.batch_size}: need at least 1")
        if self.task not in ("auto", "toy", "trace"):
            bad(f"--task must be one of auto, toy, trace; got {self.task!r}")
        toy = self.task == "toy" or (self.task == "auto" and self.model.startswith("toy"))
        if toy and self.trace is not None:
            bad(
                f"--trace {self.trace}: the toy task makes its own sequences and would ignore a trace; "
                "drop --trace, or use a real model (--model PATH) with --task trace"
            )
        for k in self.distances:
            if int(k) < 1:
                bad(f"--distances: masked distances start at 1, got {k}")
        unknown = sorted(set(self.conditions) - set(CONDITIONS))
        if unknown:
            bad(f"--conditions: unknown {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
        unknown = sorted(set(self.worlds) - set(REFERENCE_WORLDS))
        if unknown:
            bad(f"--worlds: unknown {', '.join(unknown)}; choose from {', '.join(REFERENCE_WORLDS)}")
        unknown = sorted(set(self.probes) - set(PROBE_KINDS))
        if unknown or not self.probes:
            bad(f"--probes: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(PROBE_KINDS)}")
        if any(int(h) < 0 for h in self.heads):
            bad(f"--heads: head indices start at 0 (all heads are always probed), got {list(self.heads)}")
        if self.distance_layers not in ("last", "all"):
            bad(f"--distance-layers must be 'last' or 'all', got {self.distance_layers!r}")
        if self.positions not in ("span", "digits"):
            bad(f"--positions must be 'span' or 'digits', got {self.positions!r}")

    @property
    def feature_worlds(self) -> tuple[str, ...]:
        """Worlds whose K/V are extracted: normal, restart, then the requested references."""
        return WORLDS + tuple(w for w in REFERENCE_WORLDS if w in self.worlds)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


# Quick mode and the demo (targets: --quick <= 60 s, the demo <= 90 s on 2 shared cores): the last layer and layer 0
# (the built-in check: layer-0 memento K/V are the same in every world, so every excess is exactly 0), the causal
# control, direct and masked +1, every reference world, 2 data replicates x 2,000 samples, and the linear probe in
# closed form (ridge: exact, so its 3 probe seeds are one fit). The MLP at its plateau costs minutes per row on 2
# cores; ask for it with --probes mlp. Sizes chosen so that toy-channel@step-000000 shows its init channel at
# masked +1 with a CI excluding 0 (docs/PROBES.md).
QUICK = dict(
    samples=2000,
    data_seeds=2,
    layers=(0, -1),
    all_layers=False,
    distances=(1,),
    probes=("linear",),
    train=TrainConfig(seeds=3, n_boot=500),
)


@dataclass
class PasscodeResult:
    """Result rows (``RESULT_COLUMNS``), learning curves (``CURVE_COLUMNS``), skipped requests, accounting."""

    rows: pd.DataFrame
    skips: list[Skip]
    info: dict[str, Any]
    curves: pd.DataFrame = field(default_factory=PROBE_CURVES.empty)


# -- features of every world and of the text --------------------------------------------------------------------
@dataclass
class PasscodeFeatures:
    """What the probes read for one data replicate: memento K/V per world, the memento text tokens, labels.

    Attributes:
        worlds: ``{world: MementoFeatures}`` over the same samples (``normal`` and ``restart`` always).
        text_tokens: ``{memento_block: [n, n_text]}`` int64 token ids of the memento text channel.
        ceilings: ``{memento_block: exact text ceiling}`` (absent where not computable).
        memento_tokens: ``{memento_block: [n, n_positions]}`` token ids at the probed positions (normal world):
            the control task's labels are a random function of them.
        data_seed: which replicate.
    """

    worlds: dict[str, MementoFeatures]
    text_tokens: dict[int, torch.Tensor]
    ceilings: dict[int, float]
    task: str = ""
    memento_tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    data_seed: int = 0

    @property
    def labels(self) -> np.ndarray:
        return self.worlds["normal"].labels.numpy()

    def save(self, store, prefix: str = "features") -> None:
        for world, feats in self.worlds.items():
            feats.save(store, f"{prefix}/{world}")
        tensors = {f"memento{mb}": t for mb, t in self.text_tokens.items()}
        tensors.update({f"span{mb}": t for mb, t in self.memento_tokens.items()})
        store.write_tensors(FEATURE_TEXT_TOKENS.at(prefix=prefix), tensors)
        store.write_json(
            FEATURE_TEXT.at(prefix=prefix),
            {
                "task": self.task,
                "ceilings": {str(k): v for k, v in self.ceilings.items()},
                "worlds": list(self.worlds),
                "data_seed": self.data_seed,
            },
        )

    @classmethod
    def load(cls, store, prefix: str = "features") -> "PasscodeFeatures":
        meta = store.read_json(FEATURE_TEXT.at(prefix=prefix))
        worlds = {w: MementoFeatures.load(store, f"{prefix}/{w}") for w in meta.get("worlds", WORLDS)}
        text = store.read_tensors(FEATURE_TEXT_TOKENS.at(prefix=prefix))
        return cls(
            worlds=worlds,
            text_tokens={int(k.removeprefix("memento")): v for k, v in text.items() if k.startswith("memento")},
            ceilings={int(k): float(v) for k, v in meta["ceilings"].items()},
            task=meta.get("task", ""),
            memento_tokens={int(k.removeprefix("span")): v for k, v in text.items() if k.startswith("span")},
            data_seed=int(meta.get("data_seed", 0)),
        )


REPLICATE_DIR = "data-{d}"  # one data replicate's feature set inside a model's: features[/<checkpoint>]/data-<d>


def save_replicates(store, feats: list[PasscodeFeatures], prefix: str = "features") -> None:
    """Every data replicate under ``<prefix>/data-<d>``."""
    for f in feats:
        f.save(store, f"{prefix}/{REPLICATE_DIR.format(d=f.data_seed)}")


def replicate_sets(files) -> dict[str, list[str]]:
    """``{model feature prefix: [replicate prefixes]}`` among a run's recorded files: ``features[/<ckpt>]/data-<d>``
    replicates grouped under their model's prefix; an older single cache (``features[/<ckpt>]``) is its own."""
    suffix = "/" + FEATURE_TEXT.at(prefix="").lstrip("/")
    out: dict[str, list[str]] = {}
    for f in sorted(files):
        if not (f.endswith(suffix) and f.split("/", 1)[0] == "features"):
            continue
        rep = f[: -len(suffix)]
        parent, _, last = rep.rpartition("/")
        key = parent if last.startswith("data-") and last[5:].isdigit() else rep
        out.setdefault(key, []).append(rep)
    for key in out:
        out[key].sort(key=lambda r: int(r.rpartition("data-")[2]) if "/data-" in r else -1)
    return out


def load_replicates(store, prefixes: list[str]) -> list[PasscodeFeatures]:
    """The cached data replicates at ``prefixes`` (see :func:`replicate_sets`)."""
    return [PasscodeFeatures.load(store, p) for p in prefixes]


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
    if kind == "auto":  # the loaded model knows whether it is a toy (LoadedModel.is_toy), never the spec's spelling
        is_toy = getattr(loaded, "is_toy", None)
        if is_toy is None:  # features given without a model: the spec is all there is
            is_toy = cfg.model.startswith("toy")
        kind = "toy" if is_toy else "trace"
    if kind not in TASKS:
        raise ProbeInputError(f"--task must be one of auto, {', '.join(TASKS)}; got {cfg.task!r}")
    if kind == "toy" and cfg.trace is not None:
        raise ProbeInputError(
            f"--trace {cfg.trace}: {cfg.model} runs the toy task, which makes its own sequences and would ignore "
            "a trace; drop --trace"
        )
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


def masked_distances(cfg: PasscodeConfig, task_blocks: int) -> tuple[int, ...]:
    """The masked distances to run: ``cfg.distances``, or 1..7 where the task has a memento at that distance."""
    if cfg.distances:
        return tuple(cfg.distances)
    return tuple(k for k in range(1, MAX_DISTANCE + 1) if cfg.target_block + k < task_blocks) or (1,)


def check_distances(cfg: PasscodeConfig, skips: list[Skip]) -> None:
    """Explicitly requested distances the task does not have: one error before anything runs (not a skip)."""
    if not cfg.distances:
        return
    far = [s for s in skips if s.condition == "masked"]
    if far:
        ks = ", ".join(str(s.distance) for s in far)
        raise ProbeInputError(f"--distances {ks}: {far[0].reason}")


def plan(cfg: PasscodeConfig, n_layers: int, conds: list[Condition]) -> tuple[list[tuple[Condition, int]], list[int]]:
    """(condition, layer) pairs to probe (``ALL_LAYERS`` for the concatenation) and the resolved layers."""
    layers = resolve_layers(list(cfg.layers), n_layers)
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
    worlds: tuple[str, ...] = WORLDS,
    world_seed: int = 0,
    data_seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    sharded: Any = None,
) -> PasscodeFeatures:
    """K/V at ``memento_blocks``' positions in every world of ``worlds`` the task supports (one batched replay
    each: ``task.world_tokens`` under ``task.visibility``), the memento text tokens and the text ceilings.

    ``sharded``: a :class:`~.sharded.ShardedExtractor` to run the replays on Ray model actors (the same features
    bit for bit; ``model`` then only plans the forwards)."""
    pos = {mb: task.memento_positions(mb) for mb in memento_blocks}
    wanted = [(mb, ly) for mb in memento_blocks for ly in layers]
    n = len(samples.labels)
    tag = f", data seed {data_seed}"
    present = [w for w in worlds if w in task.worlds]
    if sharded is not None:
        out = sharded.extract(
            model,
            {w: (task.world_tokens(samples, w, world_seed), task.visibility(w)) for w in present},
            pos,
            wanted,
            samples.labels,
            batch_size=min(batch_size, n),
            prefix_len=task.shared_prefix_len,
            progress=(lambda w, d, t: progress(f"features ({w}{tag})", d, t)) if progress else None,
        )
    else:
        out = {}
        for world in present:
            out[world] = extract_memento_kv(
                model,
                task.world_tokens(samples, world, world_seed),
                task.visibility(world),
                pos,
                layers,
                samples.labels,
                wanted=wanted,
                batch_size=min(batch_size, n),
                device=device,
                prefix_len=task.shared_prefix_len,
                progress=(lambda d, w=world: progress(f"features ({w}{tag})", d, n)) if progress else None,
            )
    ids = np.asarray(samples.token_ids)
    text = {mb: torch.from_numpy(ids[:, task.text_positions(mb)].copy()) for mb in memento_blocks}
    spans = {mb: torch.from_numpy(ids[:, np.asarray(pos[mb])].copy()) for mb in memento_blocks}
    ceilings = {}
    for mb in memento_blocks:
        c = task.text_ceiling(Condition("", mb - task.target_block, mb))
        if c is not None:
            ceilings[mb] = float(c)
    return PasscodeFeatures(
        worlds=out, text_tokens=text, ceilings=ceilings, task=task.name, memento_tokens=spans, data_seed=data_seed
    )


# -- probing ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """One probe fit: features of (memento block, layer, head) in ``world`` (``text``: memento text identities;
    ``control``: normal-world features with the control labels)."""

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


@dataclass
class _Fit:
    correct: np.ndarray  # [n_val, n_digits]
    epochs: int
    best_epoch: int
    stopped_by: str
    still_improving: bool
    curve: np.ndarray  # [epochs, 2]


def _feature(feats: PasscodeFeatures, key: tuple, layers: list[int]) -> torch.Tensor:
    if key[0] == "text":
        return text_features(feats.text_tokens[key[1]])
    world, mb, layer, head = key
    f = feats.worlds[world]
    if layer == ALL_LAYERS:
        return torch.cat([f.matrix(mb, ly, head) for ly in layers], dim=1)
    return f.matrix(mb, layer, head)


def _control_labels(feats: PasscodeFeatures, memento_block: int, seed: int) -> np.ndarray | None:
    """The control labels of one memento: a random function of its text (None when the text never varies)."""
    tok = feats.memento_tokens.get(memento_block)
    if tok is None:
        return None
    tok = np.asarray(tok)
    if len(np.unique(tok, axis=0)) < 2:
        return None
    return text_control_labels(tok, feats.labels.shape[1], seed)


_STOP_ORDER = {"plateau": 0, "patience": 1, "cap": 2}


def probe_features(
    feats: PasscodeFeatures | list[PasscodeFeatures],
    cfg: PasscodeConfig,
    pairs: list[tuple[Condition, int]],
    layers: list[int],
    *,
    model_name: str = "",
    checkpoint: str = "",
    task_accuracy: float = float("nan"),
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Fit every probe of the plan in every world and on the text, per data replicate; pool the replicates into
    one row per (condition, layer, head, probe); return (rows, curves, info)."""
    reps = feats if isinstance(feats, list) else [feats]
    worlds = [w for w in cfg.feature_worlds if all(w in f.worlds for f in reps)]
    heads = [ALL_HEADS, *cfg.heads]
    conds = list(dict.fromkeys(c for c, _ in pairs))
    results: dict[tuple[int, _Job], _Fit] = {}
    splits, curve_rows = {}, []
    control_ok: dict[tuple[int, int], bool] = {}
    total = len(conds) * len(cfg.probes) * len(reps)
    done = 0
    fit_cache: dict[tuple, _Fit] = {}
    for f in reps:
        d = f.data_seed
        labels = f.labels
        train_idx, val_idx = label_unique_split(labels, cfg.train.val_frac, stream_seed(cfg.seed, d, _SPLIT))
        fit_rel, stop_rel = label_unique_split(labels[train_idx], cfg.train.stop_frac, stream_seed(cfg.seed, d, _STOP))
        split = (train_idx[fit_rel], train_idx[stop_rel], val_idx)
        splits[d] = (len(train_idx), len(val_idx), len(stop_rel))
        seeds = [stream_seed(cfg.seed, d, _PROBE, k) for k in range(max(1, cfg.train.seeds))]
        for cond in conds:
            ctrl = _control_labels(f, cond.memento_block, cfg.seed) if cfg.control else None
            control_ok[(d, cond.memento_block)] = ctrl is not None
            label_sets = [labels, ctrl if ctrl is not None else labels]
            for probe_name in cfg.probes:
                jobs: list[_Job] = []
                for c, layer in pairs:
                    if c != cond:
                        continue
                    for head in heads:
                        for seed in seeds:
                            jobs += [_Job(cond, layer, head, probe_name, w, seed) for w in worlds]
                        if ctrl is not None:
                            jobs.append(_Job(cond, layer, head, probe_name, "control", seeds[0]))
                if cfg.text:
                    jobs += [_Job(cond, ALL_LAYERS, ALL_HEADS, probe_name, "text", seed) for seed in seeds]
                got = _fit_jobs(jobs, f, layers, label_sets, split, cfg, fit_cache)
                results.update({(d, j): r for j, r in got.items()})
                done += 1
                if progress:
                    progress("probes", done, total)
    for (d, job), r in results.items():
        points = r.curve[: r.epochs]  # closed-form and lbfgs linear probes: one point
        for e, (loss, acc) in enumerate(points, start=r.epochs - len(points) + 1):
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
                    "data_seed": d,
                    "best_epoch": r.best_epoch,
                    "stopped_by": r.stopped_by,
                    "still_improving": r.still_improving,
                }
            )
    n_checks = sum(1 for c, _ in pairs if ROLES[c.name] == "pipeline_check") * len(heads) * len(cfg.probes)
    chance = PASSCODE_CHANCE
    rows = []
    nan = float("nan")
    for cond, layer in pairs:
        for head in heads:
            for probe_name in cfg.probes:

                def per_rep(world: str, lay=layer, hd=head, pn=probe_name) -> list[np.ndarray]:
                    return [
                        np.stack(
                            [results[(f.data_seed, _Job(cond, lay, hd, pn, world, s))].correct for s in seeds_of(f)]
                        )
                        for f in reps
                    ]

                def seeds_of(f: PasscodeFeatures) -> list[int]:
                    return [stream_seed(cfg.seed, f.data_seed, _PROBE, k) for k in range(max(1, cfg.train.seeds))]

                boot = dict(n_boot=cfg.train.n_boot, seed=cfg.seed)
                normal = per_rep("normal")
                st = hierarchical_bootstrap(normal, per_rep("restart"), **boot)
                fits = [
                    results[(f.data_seed, _Job(cond, layer, head, probe_name, w, s))]
                    for f in reps
                    for w in worlds
                    for s in seeds_of(f)
                ]
                row = {
                    "model": model_name,
                    "checkpoint": checkpoint,
                    "task": reps[0].task,
                    "condition": cond.name,
                    "role": ROLES[cond.name],
                    "distance": cond.distance,
                    "layer": layer,
                    "head": head,
                    "probe": probe_name,
                    "seed": cfg.seed,
                    "n_seeds": max(1, cfg.train.seeds),
                    "n_data_seeds": len(reps),
                    "n_train": int(sum(splits[f.data_seed][0] for f in reps)),
                    "n_val": int(sum(splits[f.data_seed][1] for f in reps)),
                    "accuracy": st["accuracy"],
                    "ci_low": st["ci_low"],
                    "ci_high": st["ci_high"],
                    "restart_accuracy": st["b_accuracy"],
                    "restart_ci_low": st["b_ci_low"],
                    "restart_ci_high": st["b_ci_high"],
                    "implicit_excess": st["diff"],
                    "excess_ci_low": st["diff_ci_low"],
                    "excess_ci_high": st["diff_ci_high"],
                    "excess_seed_sd": st["diff_seed_sd"],
                    "data_seed_sd": st["data_seed_sd"],
                    "text_ceiling": reps[0].ceilings.get(cond.memento_block, nan),
                    "task_accuracy": task_accuracy,
                    "max_epochs": cfg.train.max_epochs,
                }
                for w in REFERENCE_WORLDS:
                    if w in worlds:
                        rt = hierarchical_bootstrap(normal, per_rep(w), **boot)
                        vals = (rt["b_accuracy"], rt["b_ci_low"], rt["b_ci_high"])
                        vals += (rt["diff"], rt["diff_ci_low"], rt["diff_ci_high"])
                    else:
                        vals = (nan,) * 6
                    keys = (f"{w}_accuracy", f"{w}_ci_low", f"{w}_ci_high")
                    keys += (f"excess_{w}", f"excess_{w}_ci_low", f"excess_{w}_ci_high")
                    row.update(dict(zip(keys, vals)))
                text = {"accuracy": nan, "ci_low": nan, "ci_high": nan}
                if cfg.text:
                    text = hierarchical_bootstrap(per_rep("text", lay=ALL_LAYERS, hd=ALL_HEADS), None, **boot)
                row.update(text_accuracy=text["accuracy"], text_ci_low=text["ci_low"], text_ci_high=text["ci_high"])
                ctrl = nan
                if cfg.control and all(control_ok[(f.data_seed, cond.memento_block)] for f in reps):
                    cf = [
                        results[(f.data_seed, _Job(cond, layer, head, probe_name, "control", seeds_of(f)[0]))]
                        for f in reps
                    ]
                    ctrl = float(np.mean([c.correct.mean() for c in cf]))
                row.update(control_accuracy=ctrl, selectivity=st["accuracy"] - ctrl)
                # how the fits behind accuracy and every excess stopped (the text and control fits' own flags are
                # in probe_curves.parquet, worlds "text" and "control")
                row.update(
                    epochs=int(max(r.epochs for r in fits)),
                    best_epoch=int(max(r.best_epoch for r in fits)),
                    stopped_by=max((r.stopped_by for r in fits), key=_STOP_ORDER.__getitem__),
                    still_improving=bool(any(r.still_improving for r in fits)),
                    hit_cap=bool(any(r.stopped_by == "cap" for r in fits)),
                )
                if ROLES[cond.name] == "pipeline_check":
                    row.update(chance_check(normal, chance, n_checks, seed=cfg.seed))
                else:
                    row.update(check="", check_alpha=nan, check_bound=nan)
                rows.append(row)
    info = {
        "n_fits": len(results),
        "n_distinct_fits": len(fit_cache),
        "worlds": worlds,
        "split": {str(d): {"train": a, "val": b, "stop": c} for d, (a, b, c) in splits.items()},
        "n_checks": n_checks,
    }
    return PROBE_RESULTS.frame(rows), PROBE_CURVES.frame(curve_rows) if curve_rows else PROBE_CURVES.empty(), info


def _digest(x: torch.Tensor) -> str:
    """A content hash of a feature matrix: fits on equal features, labels and seed are equal (and shared)."""
    a = x.detach().contiguous().cpu().numpy()
    return hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest() + str(a.shape)


def _fit_jobs(jobs, feats, layers, label_sets, split, cfg: PasscodeConfig, cache: dict) -> dict:
    """Fit ``jobs``: each distinct (features, labels, seed) once (layer-0 K/V of the memento are the same in every
    world, for instance), grouped by width into batched models (at most ``train.max_models`` at once)."""
    matrices: dict[tuple, torch.Tensor] = {}
    digests: dict[tuple, str] = {}
    for job in jobs:
        if job.feature_key not in matrices:
            matrices[job.feature_key] = _feature(feats, job.feature_key, layers)
            digests[job.feature_key] = _digest(matrices[job.feature_key])
    lab_digest = [hashlib.blake2b(np.ascontiguousarray(y).tobytes(), digest_size=8).hexdigest() for y in label_sets]
    probe = make_probe(jobs[0].probe)
    fit_idx, stop_idx, val_idx = split
    split_key = hashlib.blake2b(np.concatenate(split).tobytes(), digest_size=8).hexdigest()

    def key(j: _Job) -> tuple:
        return (probe.name, digests[j.feature_key], lab_digest[int(j.world == "control")], j.seed, split_key)

    todo: dict[tuple, _Job] = {}
    for job in jobs:
        k = key(job)
        if k not in cache and k not in todo:
            todo[k] = job
    by_width: dict[int, list[tuple]] = {}
    for k, job in todo.items():
        by_width.setdefault(int(matrices[job.feature_key].shape[1]), []).append(k)
    for group in by_width.values():
        for s in range(0, len(group), cfg.train.max_models):
            chunk = group[s : s + cfg.train.max_models]
            chunk_jobs = [todo[k] for k in chunk]
            fkeys = list(dict.fromkeys(j.feature_key for j in chunk_jobs))
            tasks = [FitTask(fkeys.index(j.feature_key), int(j.world == "control"), j.seed) for j in chunk_jobs]
            feats_k = [matrices[k] for k in fkeys]
            if probe.name == "linear" and cfg.train.linear_solver == "ridge":
                res = fit_ridge(feats_k, label_sets, tasks, fit_idx, stop_idx, val_idx, cfg.train)
            elif probe.name == "linear" and cfg.train.linear_solver == "lbfgs":
                train_idx = np.sort(np.concatenate([fit_idx, stop_idx]))  # no early stopping: all training data
                res = fit_logistic(feats_k, label_sets, tasks, train_idx, val_idx, cfg.train)
            else:
                res = fit_batched(
                    probe, feats_k, label_sets, tasks, fit_idx, stop_idx, val_idx, cfg.train, device=cfg.device
                )
            for i, k in enumerate(chunk):
                cache[k] = _Fit(
                    correct=res.correct[i],
                    epochs=int(res.epochs[i]),
                    best_epoch=int(res.best_epoch[i]),
                    stopped_by=str(res.stopped_by[i]),
                    still_improving=bool(res.still_improving[i]),
                    curve=res.curves[i],
                )
    return {job: cache[key(job)] for job in jobs}


def run_passcode(
    cfg: PasscodeConfig,
    loaded=None,
    *,
    task: PasscodeTask | None = None,
    features: PasscodeFeatures | list[PasscodeFeatures] | None = None,
    checkpoint: str = "",
    task_accuracy: float = float("nan"),
    on_features: Callable[[list[PasscodeFeatures]], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    sharding: Any = None,
) -> PasscodeResult:
    """Run the experiment on one model: features of every world for each data replicate (or ``features`` from a
    cache), then probes.

    Args:
        cfg: the experiment config.
        loaded: a :class:`memento_lens.runtime.model.LoadedModel` (loaded from ``cfg.model`` when None).
        task: the passcode task (default :func:`make_task`).
        features: reuse cached features (no model forward), one per data replicate; must cover the planned pairs.
        checkpoint, task_accuracy: recorded in every row (toy checkpoints sweep).
        on_features: called once with the freshly extracted replicates (to cache them).
        progress: ``progress(stage, done, total)``.
        sharding: a :class:`memento_lens.runtime.cluster.Sharding`: extract features on Ray model actors
            (``workers > 1`` or a cluster address; the same features bit for bit). The accounting goes to
            ``info["sharding"]``.
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
        conds, skips = task.conditions(masked_distances(cfg, task.n_blocks), cfg.conditions)
        check_distances(cfg, skips)
        pairs, layers = plan(cfg, n_layers, conds)
        skips += [
            Skip("world", 0, f"world {w}: the {task.name} task cannot build it")
            for w in cfg.feature_worlds
            if w not in task.worlds
        ]
        t1 = time.perf_counter()
        blocks = sorted({c.memento_block for c, _ in pairs})
        with contextlib.ExitStack() as stack:
            sharded = None
            if sharding is not None and sharding.sharded:
                from memento_lens.runtime.cluster import ModelSpec

                from .sharded import ShardedExtractor

                spec = ModelSpec(cfg.model, cfg.device, cfg.dtype)
                sharded = stack.enter_context(ShardedExtractor(sharding, spec))
            reps = []
            for d in range(cfg.data_seeds):
                samples = task.samples(cfg.samples, stream_seed(cfg.seed, d, _DATA))
                reps.append(
                    extract_features(
                        task,
                        model,
                        samples,
                        blocks,
                        layers,
                        worlds=cfg.feature_worlds,
                        world_seed=stream_seed(cfg.seed, d, _WORLD),
                        data_seed=d,
                        batch_size=cfg.batch_size,
                        device=cfg.device,
                        progress=progress,
                        sharded=sharded,
                    )
                )
            if sharded is not None:
                info["sharding"] = sharded.accounting.to_dict()
        info.update(task.info)
        info["feature_seconds"] = time.perf_counter() - t1
        info["n_layers"] = n_layers
        if on_features is not None:
            on_features(reps)
    else:
        reps = features if isinstance(features, list) else [features]
        normal = reps[0].worlds["normal"]
        n_layers = max(normal.layers()) + 1
        n_blocks = max(mb for mb, _ in normal.kv) + 1
        conds, skips = passcode_conditions(cfg.target_block, n_blocks, masked_distances(cfg, n_blocks), cfg.conditions)
        check_distances(cfg, skips)
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
        skips += [
            Skip("world", 0, f"world {w}: not in the cached features")
            for w in cfg.feature_worlds
            if not all(w in f.worlds for f in reps)
        ]
        info["task"] = reps[0].task
    info["layers"] = layers
    t2 = time.perf_counter()
    rows, curves, fit_info = probe_features(
        reps,
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
    info["n_samples"] = int(sum(len(f.labels) for f in reps))
    info["n_data_seeds"] = len(reps)
    return PasscodeResult(rows=rows, skips=skips, info=info, curves=curves)


def label(column: str, value: Any) -> str:
    """How a table value reads in printed output: sentinels by name (``layer ALL_LAYERS`` -> ``all``)."""
    return SENTINELS.get(column, {}).get(value, str(value))


SUMMARY_COLUMNS = (
    "accuracy",
    "ci_low",
    "ci_high",
    "restart_accuracy",
    "text_accuracy",
    "implicit_excess",
    "excess_ci_low",
    "excess_ci_high",
    *(f"{p}{w}{q}" for w in REFERENCE_WORLDS for p, q in (("", "_accuracy"), ("excess_", ""))),
    *(f"excess_{w}_ci_{b}" for w in REFERENCE_WORLDS for b in ("low", "high")),
)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """A small JSON summary per condition/probe: every world and excess by layer and distance, with the row's
    sample count, seeds and stopping flags; the causal control's check."""
    out: dict[str, Any] = {"chance": PASSCODE_CHANCE, "layer_all": ALL_LAYERS}
    flags = ["n_val", "n_seeds", "n_data_seeds", "stopped_by", "still_improving", "check"]

    def entry(r) -> dict:
        e = {c: float(getattr(r, c)) for c in SUMMARY_COLUMNS if hasattr(r, c)}
        e.update(
            {
                c: (getattr(r, c).item() if hasattr(getattr(r, c), "item") else getattr(r, c))
                for c in flags
                if hasattr(r, c)
            }
        )
        return e

    for (cond, probe), g in df[df["head"] == ALL_HEADS].groupby(["condition", "probe"]):
        last = g[g["layer"] >= 0]["layer"].max()
        out.setdefault(cond, {})[probe] = {
            "role": ROLES.get(cond, ""),
            "by_layer": {label("layer", int(r.layer)): entry(r) for r in g[g["distance"] <= 1].itertuples()},
            "by_distance": {str(int(r.distance)): entry(r) for r in g.itertuples() if r.layer == last},
        }
    return out
