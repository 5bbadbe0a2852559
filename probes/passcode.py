"""The passcode probing experiment (paper §6.2.2 / Appendix A.4.2): features -> probes -> probe_results.parquet.

Sweep plan (keeps the full toy sweep affordable on a CPU): direct, causal control and masked +1 at every
requested layer; masked distances >= 2 at ``distance_layers`` ("last": the last requested layer, as in the
paper's distance curve; "all": every requested layer). Every probe is scored with its control task.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from memento_lens.runtime.rundir.schema import PROBE_RESULTS

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
from .train import TrainConfig, score_probe

RESULT_COLUMNS = PROBE_RESULTS.names  # probe_results.parquet: defined in runtime/rundir/schema.py


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
        heads: KV heads probed one at a time in addition to all heads (-1).
        target_block: 0-based block holding the passcode (1 = the paper's T2).
        distances: masked distances k (memento of target + k).
        distance_layers: ``last`` or ``all`` (see module doc).
        positions: ``span`` (summary_start .. summary_end) or ``digits`` (toy memento digits only).
        probes: probe names (``mlp``, ``linear``).
        control: also fit the control task (selectivity).
    """

    model: str = "toy"
    task: str = "auto"
    trace: str | None = None
    samples: int = 50_000
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    conditions: tuple[str, ...] = CONDITIONS
    target_block: int = 1
    distances: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    distance_layers: str = "last"
    positions: str = "span"
    probes: tuple[str, ...] = ("mlp", "linear")
    control: bool = True
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"
    dtype: str = "float32"
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


# The demo preset (target < 1 min on 2 cores): first and last layer, masked +1/+2 only, so the replay stops
# after memento 3 (less than half the sequence), and short training.
QUICK = dict(
    samples=2000,
    layers=(0, -1),
    distances=(1, 2),
    train=TrainConfig(max_epochs=10, patience=2, batch_size=512, n_boot=200),
)


@dataclass
class PasscodeResult:
    """Result rows (``RESULT_COLUMNS``), skipped requests, and accounting."""

    rows: pd.DataFrame
    skips: list[Skip]
    info: dict[str, Any]


@dataclass
class Dataset:
    """Token ids ``[n, T]``, labels ``[n, 5]``, shared visibility ``[T, T]``, memento positions per block."""

    token_ids: np.ndarray
    labels: np.ndarray
    visible: Any
    positions: dict[int, np.ndarray]
    n_blocks: int
    info: dict[str, Any]


def build_dataset(cfg: PasscodeConfig, loaded, task: str) -> Dataset:
    """The samples of the experiment: toy sequences or passcode substitutions into a real trace."""
    if task == "toy":
        from memento_lens.runtime.toy.task import ToyLayout

        from .features import toy_memento_positions, toy_passcode_batch, toy_visibility

        layout = ToyLayout()
        if not 0 <= cfg.target_block < layout.n_blocks:
            raise ProbeInputError(f"--target-block {cfg.target_block} outside the toy's {layout.n_blocks} blocks")
        batch, labels = toy_passcode_batch(cfg.samples, cfg.seed, layout, cfg.target_block)
        pos = toy_memento_positions(layout, range(layout.n_blocks), span=cfg.positions == "span")
        return Dataset(
            batch.token_ids,
            labels,
            toy_visibility(layout),
            pos,
            layout.n_blocks,
            {"task": "toy", "passcode": f"digits of block {cfg.target_block} (0-based)"},
        )
    if cfg.trace is None:
        raise ProbeInputError(
            "--trace is required for a real model (a Memento JSON trace, e.g. ../shared/data/memento_example_math.json)"
        )
    from memento_lens.runtime.masks import visibility_mask
    from memento_lens.runtime.toy.task import TOY_MASKING

    from .real import build_passcode_trace, load_segments, passcode_samples

    tokens = loaded.require_tokens()
    trace = build_passcode_trace(
        load_segments(cfg.trace), loaded.tokenizer, tokens, TOY_MASKING, cfg.target_block, source=str(cfg.trace)
    )
    samples = passcode_samples(trace, loaded.tokenizer, cfg.samples, cfg.seed)
    if cfg.positions != "span":
        raise ProbeInputError("--positions digits applies to the toy only; real mementos use their span")
    return Dataset(
        samples.token_ids,
        samples.labels,
        visibility_mask(trace.schedule),
        trace.memento_spans,
        trace.n_blocks,
        {
            "task": "trace",
            "trace": str(cfg.trace),
            "n_tokens": int(len(trace.token_ids)),
            "skipped_samples": samples.skipped,
            "skip_reasons": samples.skip_reasons,
        },
    )


def plan(
    cfg: PasscodeConfig, n_layers: int, n_blocks: int
) -> tuple[list[tuple[Condition, int]], list[Skip], list[int]]:
    """(condition, layer) pairs to probe, skipped requests, and the resolved layers."""
    layers = resolve_layers(list(cfg.layers), n_layers)
    conds, skips = passcode_conditions(cfg.target_block, n_blocks, cfg.distances, cfg.conditions)
    if cfg.distance_layers not in ("last", "all"):
        raise ProbeInputError(f"--distance-layers must be 'last' or 'all', got {cfg.distance_layers!r}")
    far_layers = layers if cfg.distance_layers == "all" else layers[-1:]
    pairs = [(c, ly) for c in conds for ly in (far_layers if c.distance >= 2 else layers)]
    return pairs, skips, layers


def run_passcode(
    cfg: PasscodeConfig,
    loaded=None,
    *,
    features: MementoFeatures | None = None,
    checkpoint: str = "",
    task_accuracy: float = float("nan"),
    on_features: Callable[[MementoFeatures], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PasscodeResult:
    """Run the experiment.

    Args:
        cfg: the experiment config.
        loaded: a :class:`memento_lens.runtime.model.LoadedModel` (loaded from ``cfg.model`` when None).
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
        task = cfg.task
        if task == "auto":
            from memento_lens.runtime.toy.task import VOCAB

            task = "toy" if cfg.model.startswith("toy") or model.config.vocab_size <= len(VOCAB) + 1 else "trace"
        data = build_dataset(cfg, loaded, task)
        info.update(data.info)
        pairs, skips, layers = plan(cfg, n_layers, data.n_blocks)
        wanted = sorted({(c.memento_block, ly) for c, ly in pairs})
        t1 = time.perf_counter()
        features = extract_memento_kv(
            model,
            data.token_ids,
            data.visible,
            {mb: data.positions[mb] for mb, _ in wanted},
            layers,
            data.labels,
            wanted=wanted,
            batch_size=cfg.batch_size,
            device=cfg.device,
            progress=(lambda done: progress("features", done, len(data.labels))) if progress else None,
        )
        info["feature_seconds"] = time.perf_counter() - t1
        info["n_layers"] = n_layers
        info["n_blocks"] = data.n_blocks
        if on_features is not None:
            on_features(features)
    else:
        n_layers = max(features.layers()) + 1
        n_blocks = max(mb for mb, _ in features.kv) + 1
        pairs, skips, layers = plan(cfg, n_layers, n_blocks)
        missing = [(c.memento_block, ly) for c, ly in pairs if (c.memento_block, ly) not in features.kv]
        if missing:
            raise ProbeInputError(
                f"cached features lack (memento block, layer) {missing[:4]}; re-extract "
                "(drop --features-from) or request layers/distances the cache holds"
            )
    labels = features.labels.numpy()
    rows = []
    heads = [-1, *cfg.heads]
    total = len(pairs) * len(heads) * len(cfg.probes)
    done = 0
    t2 = time.perf_counter()
    for cond, layer in pairs:
        for head in heads:
            x = features.matrix(cond.memento_block, layer, head)
            for name in cfg.probes:
                probe = make_probe(name)
                score = score_probe(probe, x, labels, cfg.train, seed=cfg.seed, control=cfg.control)
                rows.append(
                    {
                        "model": cfg.model,
                        "checkpoint": checkpoint,
                        "condition": cond.name,
                        "distance": cond.distance,
                        "layer": layer,
                        "head": head,
                        "probe": name,
                        "seed": cfg.seed,
                        "n_train": score.n_train,
                        "n_val": score.n_val,
                        "accuracy": score.accuracy,
                        "ci_low": score.ci_low,
                        "ci_high": score.ci_high,
                        "control_accuracy": score.control_accuracy,
                        "selectivity": score.selectivity,
                        "task_accuracy": task_accuracy,
                    }
                )
                done += 1
                if progress:
                    progress("probes", done, total)
    info["probe_seconds"] = time.perf_counter() - t2
    info["seconds"] = time.perf_counter() - t0
    info["n_samples"] = int(len(labels))
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return PasscodeResult(rows=df, skips=skips, info=info)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """A small JSON summary: best accuracy per condition/probe and the masked first vs last layer."""
    out: dict[str, Any] = {"chance": 0.1}
    for (cond, probe), g in df[df["head"] == -1].groupby(["condition", "probe"]):
        out.setdefault(cond, {})[probe] = {
            "max_accuracy": float(g["accuracy"].max()),
            "by_layer": {int(r.layer): float(r.accuracy) for r in g[g["distance"] <= 1].itertuples()},
            "by_distance": {int(r.distance): float(r.accuracy) for r in g.itertuples() if r.layer == g["layer"].max()},
        }
    return out
