"""Restart ablation (paper §6.2.1) and causal KV patching (beyond the paper).

Worlds (all from the runtime's schedules, one structure shared by every sequence of a batch):

* ``normal``: block masking keep 0; each memento's KV was computed with its block visible.
* ``restart``: the restart schedule (block *and* delimiters evicted, memento KV recomputed without the
  block). Memento c itself is still generated with block c visible, so segment c (block c + memento c) is
  scored under :meth:`AblationLayout.restart_world` ``(c)``: the restart mask with memento c's rows seeing
  block c. One forward per segment, truncated after it.

Scores per segment c >= 1 (segment 0 has no earlier memento, so both worlds agree): toy = the memento
digits of block c (teacher-forced task accuracy, NLL); real traces = every token of block c + memento c
(+ the answer after the last memento), NLL and KL(normal || restart).

Patching (see :mod:`.patching`): in a base world, the K/V of mementos j < c at one layer (optionally one KV
head) are replaced by the other world's; every other layer stays the base's own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from memento_lens.runtime.dense import dense_forward
from memento_lens.runtime.masks import visibility_mask
from memento_lens.runtime.progress import ProgressFn  # the one (stage, done, total) callback type
from memento_lens.runtime.rundir import schema as run_schema
from memento_lens.runtime.rundir.schema import ABLATIONS, ALL_HEADS, NO_LAYER
from memento_lens.runtime.rundir.store import json_rows
from memento_lens.runtime.schedule import EventKind, Schedule

from .patching import KVProj, capture_kv_proj, patch_kv_proj, surgery_patches

DIRECTIONS = {"restart->normal": ("normal", "restart"), "normal->restart": ("restart", "normal")}


@dataclass
class AblationLayout:
    """Structure shared by a batch.

    Attributes:
        normal_visible, restart_visible: ``[T, T]`` bool.
        restart_ranges: ``{c: (rewind_to, position, start, end)}`` of block c's restart event.
        memento_spans: ``{c: [positions]}`` summary_start .. summary_end.
        targets: ``{segment: [positions]}`` tokens scored (each predicted from the position before it).
    """

    normal_visible: torch.Tensor
    restart_visible: torch.Tensor
    restart_ranges: dict[int, tuple[int, int, int, int]]
    memento_spans: dict[int, np.ndarray]
    targets: dict[int, np.ndarray]

    @classmethod
    def from_schedules(cls, normal: Schedule, restart: Schedule, targets: dict[int, np.ndarray]) -> "AblationLayout":
        ranges = {
            e.block: (e.rewind_to, e.position, e.start, e.end) for e in restart.evictions if e.kind == EventKind.RESTART
        }
        spans = {
            s.block: np.arange(s.summary_start, s.summary_end + 1)
            for s in normal.blocks
            if s.summary_start is not None and s.summary_end is not None
        }
        return cls(visibility_mask(normal), visibility_mask(restart), ranges, spans, targets)

    def restart_world(self, c: int) -> torch.Tensor:
        """Restart visibility in which memento c's rows still see block c (as when it was generated)."""
        vis = self.restart_visible.clone()
        if c in self.restart_ranges:
            rewind, pos, start, end = self.restart_ranges[c]
            vis[rewind:pos, start:end] = True
        return vis

    def earlier_memento_positions(self, c: int) -> torch.Tensor:
        parts = [self.memento_spans[j] for j in sorted(self.memento_spans) if j < c]
        return torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64), dtype=torch.long)

    def all_memento_positions(self) -> torch.Tensor:
        return torch.as_tensor(
            np.concatenate([self.memento_spans[j] for j in sorted(self.memento_spans)]), dtype=torch.long
        )

    @property
    def segments(self) -> list[int]:
        return [c for c in sorted(self.targets) if c >= 1]


def restart_world_config(config):
    """The restart world of a block-masking config (the paper's restart mode, everything else the same).

    The one place ablations build it; ``runtime.config.world_config(base, "restart")`` once the runtime has it.
    """
    try:
        from memento_lens.runtime.config import world_config
    except ImportError:  # older runtime: the field itself
        import dataclasses

        return dataclasses.replace(config, restart_mode=True)
    return world_config(config, "restart")


def layout_from_tokens(token_ids, config, tokens, prompt_len: int, targets=None) -> AblationLayout:
    """The :class:`AblationLayout` of one token stream under ``config`` (resolved) and its restart world;
    ``targets``: ``{segment: positions}`` from the normal schedule (default :func:`trace_targets`)."""
    from memento_lens.runtime.schedule import compute_schedule

    ids = [int(t) for t in token_ids]
    normal = compute_schedule(ids, config, tokens, prompt_len=prompt_len)
    restart = compute_schedule(ids, restart_world_config(config), tokens, prompt_len=prompt_len)
    return AblationLayout.from_schedules(normal, restart, targets(normal) if targets else trace_targets(normal))


def toy_layout(lay=None) -> AblationLayout:
    """The toy's layout: segment c scores memento c's digits."""
    from memento_lens.runtime.toy.task import TOY_MASKING, TOY_TOKENS, ToyLayout, sample

    lay = lay or ToyLayout()
    ids = sample(1, 0, lay).token_ids[0]
    cfg = TOY_TOKENS.resolve_config(TOY_MASKING)
    return layout_from_tokens(ids, cfg, TOY_TOKENS, 1, lambda _: {c: lay.memento(c) for c in range(lay.n_blocks)})


def trace_targets(schedule: Schedule) -> dict[int, np.ndarray]:
    """Real traces: segment c = tokens after memento c-1 up to memento c's end; the answer after the last memento
    is segment ``n_blocks``."""
    ends = [s.summary_end for s in schedule.blocks if s.summary_end is not None]
    out: dict[int, np.ndarray] = {}
    for c in range(1, len(ends)):
        out[c] = np.arange(ends[c - 1] + 1, ends[c] + 1)
    if ends and ends[-1] + 1 < schedule.n_tokens:
        out[len(ends)] = np.arange(ends[-1] + 1, schedule.n_tokens)
    return out


@dataclass
class SegmentScore:
    """Per-sequence scores of one segment: ``nll``, ``correct`` ``[B, P]``; ``logp`` ``[B, P, V]`` (kept for KL)."""

    nll: torch.Tensor
    correct: torch.Tensor
    logp: torch.Tensor


def score_segment(
    model: torch.nn.Module,
    ids: torch.Tensor,
    visible: torch.Tensor,
    targets: np.ndarray,
    patches: dict[int, KVProj] | None = None,
) -> SegmentScore:
    """Teacher-forced log-probs of ``ids[:, targets]`` under ``visible`` (and optional K/V patches)."""
    t = int(targets.max()) + 1
    tg = torch.as_tensor(targets, dtype=torch.long, device=ids.device)
    if patches:
        with patch_kv_proj(model, patches):
            logits = dense_forward(model, ids[:, :t], visible[:t, :t], want_kv=False).logits
    else:
        logits = dense_forward(model, ids[:, :t], visible[:t, :t], want_kv=False).logits
    logp = F.log_softmax(logits[:, tg - 1].float(), dim=-1)
    gold = ids[:, tg]
    nll = -logp.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    return SegmentScore(nll=nll, correct=logp.argmax(-1) == gold, logp=logp)


def kl_div(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``KL(ref || other)`` per token from log-probs ``[..., V]``."""
    return (ref.exp() * (ref - other)).sum(-1)


@dataclass
class AblationAccumulator:
    """Per-sequence (and per-segment) values collected over batches."""

    values: dict[tuple, list[np.ndarray]] = field(default_factory=dict)

    def add(self, key: tuple, per_sequence: torch.Tensor) -> None:
        self.values.setdefault(key, []).append(per_sequence.detach().cpu().double().numpy())

    def get(self, key: tuple) -> np.ndarray:
        return np.concatenate(self.values[key])


def restart_ablation(
    model: torch.nn.Module,
    token_ids: np.ndarray,
    layout: AblationLayout,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> AblationAccumulator:
    """Teacher-forced normal vs restart scores. Keys: (world, segment, metric) with metric in
    {accuracy, nll, kl}; values per sequence (mean over the segment's tokens).

    ``progress(done, total)`` after every segment of every batch, in sequence-segments (``total = n x segments``),
    so one long real trace moves the bar segment by segment."""
    acc = AblationAccumulator()
    ids_all = torch.as_tensor(token_ids, dtype=torch.long)
    normal_vis = layout.normal_visible.to(device)
    total, done = len(ids_all) * len(layout.segments), 0
    for s in range(0, len(ids_all), batch_size):
        ids = ids_all[s : s + batch_size].to(device)
        for c in layout.segments:
            tg = layout.targets[c]
            ref = score_segment(model, ids, normal_vis, tg)
            rst = score_segment(model, ids, layout.restart_world(c).to(device), tg)
            for world, sc in (("normal", ref), ("restart", rst)):
                acc.add((world, c, "accuracy"), sc.correct.float().mean(1))
                acc.add((world, c, "nll"), sc.nll.mean(1))
            acc.add(("restart", c, "kl"), kl_div(ref.logp, rst.logp).mean(1))
            done += len(ids)
            if progress:
                progress(done, total)
    return acc


def check_directions(directions: Iterable[str]) -> None:
    """Refuse an unknown patching direction, naming ``--directions`` and the valid ones."""
    from .features import ProbeInputError

    for d in directions:
        if d not in DIRECTIONS:
            raise ProbeInputError(f"--directions: unknown {d!r}; choose from {', '.join(DIRECTIONS)}")


def capture_world(
    model: torch.nn.Module, ids: torch.Tensor, visible: torch.Tensor, positions: torch.Tensor
) -> dict[int, KVProj]:
    """K/V projections of every layer at ``positions`` from one dense forward under ``visible``."""
    n_layers = int(model.config.num_hidden_layers)
    t = int(positions.max()) + 1
    with capture_kv_proj(model, list(range(n_layers)), positions) as cap:
        dense_forward(model, ids[:, :t], visible[:t, :t], want_kv=False)
    return cap


def patch_sweep(
    model: torch.nn.Module,
    token_ids: np.ndarray,
    layout: AblationLayout,
    layers: Iterable[int],
    *,
    heads: Iterable[int] = (ALL_HEADS,),
    directions: Iterable[str] = tuple(DIRECTIONS),
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> AblationAccumulator:
    """Per layer (and head) and direction, scores with earlier mementos' K/V patched at that layer only.

    Keys: (direction, layer, head, segment, metric) plus the unpatched bases (world, NO_LAYER, ALL_HEADS, segment, metric)
    (world = "normal"/"restart"). Metrics: accuracy, nll, kl (vs the unpatched base world).
    ``progress(done, total)`` after every segment of every batch, in sequence-segments.
    """
    layers, heads = list(layers), list(heads)
    head_dim = int(
        getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    )
    directions = list(directions)
    check_directions(directions)
    acc = AblationAccumulator()
    ids_all = torch.as_tensor(token_ids, dtype=torch.long)
    pos_all = layout.all_memento_positions()
    normal_vis = layout.normal_visible.to(device)
    total, done = len(ids_all) * len(layout.segments), 0
    for s in range(0, len(ids_all), batch_size):
        ids = ids_all[s : s + batch_size].to(device)
        caps = {
            "normal": capture_world(model, ids, normal_vis, pos_all),
            "restart": capture_world(model, ids, layout.restart_visible.to(device), pos_all),
        }
        for c in layout.segments:
            tg = layout.targets[c]
            earlier = layout.earlier_memento_positions(c)
            worlds = {"normal": normal_vis, "restart": layout.restart_world(c).to(device)}
            base_scores = {}
            for w, vis in worlds.items():
                base_scores[w] = score_segment(model, ids, vis, tg)
                acc.add((w, NO_LAYER, ALL_HEADS, c, "accuracy"), base_scores[w].correct.float().mean(1))
                acc.add((w, NO_LAYER, ALL_HEADS, c, "nll"), base_scores[w].nll.mean(1))
            for d in directions:
                base_w, donor_w = DIRECTIONS[d]
                for layer in layers:
                    for head in heads:
                        patches = surgery_patches(caps[base_w], caps[donor_w], layer, earlier, head, head_dim)
                        sc = score_segment(model, ids, worlds[base_w], tg, patches)
                        key = (d, layer, head, c)
                        acc.add((*key, "accuracy"), sc.correct.float().mean(1))
                        acc.add((*key, "nll"), sc.nll.mean(1))
                        acc.add((*key, "kl"), kl_div(base_scores[base_w].logp, sc.logp).mean(1))
            done += len(ids)
            if progress:
                progress(done, total)
    return acc


@torch.inference_mode()
def toy_generated_accuracy(
    model: torch.nn.Module,
    token_ids: np.ndarray,
    layout: AblationLayout,
    world: str,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Greedy generation of every memento's digits (block digits given), errors carried forward.

    Returns ``[n, n_segments]`` bool: memento c fully right (segments c >= 1)."""
    out = []
    ids_all = torch.as_tensor(token_ids, dtype=torch.long)
    for s in range(0, len(ids_all), batch_size):
        ids = ids_all[s : s + batch_size].to(device).clone()
        gold = ids.clone()
        for c in sorted(layout.targets):
            vis = (layout.normal_visible if world == "normal" else layout.restart_world(c)).to(device)
            for p in layout.targets[c]:
                logits = dense_forward(model, ids[:, :p], vis[:p, :p], want_kv=False).logits
                ids[:, p] = logits[:, -1].argmax(-1)
        segs = layout.segments
        out.append(
            torch.stack([(ids[:, layout.targets[c]] == gold[:, layout.targets[c]]).all(1) for c in segs], 1)
            .cpu()
            .numpy()
        )
    return np.concatenate(out)


# -- tables (ablations.parquet contract) ---------------------------------------------------------------------
ABLATION_COLUMNS = ABLATIONS.names  # ablations.parquet: defined in runtime/rundir/schema.py


MIN_CI_SEQUENCES = 2  # a bootstrap CI over sequences needs at least two of them


def no_ci_note(n: int) -> str | None:
    """What to say instead of a CI over ``n`` sequences (None when a CI is defined)."""
    return f"n = {n}: no CI (a CI needs at least {MIN_CI_SEQUENCES} sequences)" if n < MIN_CI_SEQUENCES else None


def _ci(per_seq: np.ndarray, seed: int = 0, n_boot: int = 1000) -> tuple[float, float, float]:
    """Mean and bootstrap CI over sequences; with fewer than :data:`MIN_CI_SEQUENCES` the CI is undefined
    (NaN bounds: null in Parquet and JSON), never a bootstrap of one value."""
    from .train import bootstrap_ci

    x = np.asarray(per_seq, dtype=np.float64)
    if len(x) < MIN_CI_SEQUENCES:
        return float(x.mean()) if len(x) else float("nan"), float("nan"), float("nan")
    return bootstrap_ci(x[:, None], n_boot=n_boot, seed=seed)


def _over_segments(acc: AblationAccumulator, prefix: tuple, metric: str, segments: list[int]) -> np.ndarray:
    """Per-sequence mean over segments c >= 1."""
    return np.mean([acc.get((*prefix, c, metric)) for c in segments], axis=0)


def restart_rows(
    acc: AblationAccumulator,
    layout: AblationLayout,
    model: str,
    checkpoint: str = "",
    generated: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """Contract rows: per world the teacher-forced accuracy and NLL, restart KL, and (toy) generated exact rate."""
    rows = []
    segs = layout.segments

    def row(variant, metric, per_seq):
        v, lo, hi = _ci(per_seq)
        rows.append(
            {
                "experiment": "restart",
                "model": model,
                "checkpoint": checkpoint,
                "variant": variant,
                "layer": NO_LAYER,
                "head": ALL_HEADS,
                "direction": "",
                "metric": metric,
                "value": v,
                "ci_low": lo,
                "ci_high": hi,
                "n": int(len(per_seq)),
            }
        )

    for world in ("normal", "restart"):
        row(world, "accuracy_teacher_forced", _over_segments(acc, (world,), "accuracy", segs))
        row(world, "nll_teacher_forced", _over_segments(acc, (world,), "nll", segs))
    row("restart", "kl_teacher_forced", _over_segments(acc, ("restart",), "kl", segs))
    for world, exact in (generated or {}).items():
        row(world, "memento_exact_generated", exact.mean(axis=1))
    return rows


def restart_block_rows(acc: AblationAccumulator, layout: AblationLayout, model: str) -> list[dict]:
    """Per segment (block) detail: ``ablation_blocks.parquet`` (segment, variant, metric, value, CI, n)."""
    rows = []
    for c in layout.segments:
        for world, metric in (
            ("normal", "accuracy"),
            ("normal", "nll"),
            ("restart", "accuracy"),
            ("restart", "nll"),
            ("restart", "kl"),
        ):
            per = acc.get((world, c, metric))
            v, lo, hi = _ci(per)
            rows.append(
                {
                    "experiment": "restart",
                    "model": model,
                    "segment": c,
                    "variant": world,
                    "metric": metric,
                    "value": v,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n": int(len(per)),
                }
            )
    return rows


def patch_rows(
    acc: AblationAccumulator,
    layout: AblationLayout,
    model: str,
    layers: list[int],
    heads: list[int],
    directions: list[str],
    checkpoint: str = "",
) -> list[dict]:
    """Contract rows: unpatched bases (layer NO_LAYER) and, per direction/layer/head, accuracy, nll, kl and the shift
    from the base world (``delta_accuracy``, ``delta_nll``)."""
    rows = []
    segs = layout.segments

    def row(variant, layer, head, direction, metric, per_seq):
        v, lo, hi = _ci(per_seq)
        rows.append(
            {
                "experiment": "patch",
                "model": model,
                "checkpoint": checkpoint,
                "variant": variant,
                "layer": layer,
                "head": head,
                "direction": direction,
                "metric": metric,
                "value": v,
                "ci_low": lo,
                "ci_high": hi,
                "n": int(len(per_seq)),
            }
        )

    base = {}
    for world in ("normal", "restart"):
        for metric in ("accuracy", "nll"):
            base[(world, metric)] = _over_segments(acc, (world, NO_LAYER, ALL_HEADS), metric, segs)
            row(world, NO_LAYER, ALL_HEADS, "", metric, base[(world, metric)])
    for d in directions:
        base_w, donor_w = DIRECTIONS[d]
        for layer in layers:
            for head in heads:
                key = (d, layer, head)
                for metric in ("accuracy", "nll", "kl"):
                    per = _over_segments(acc, key, metric, segs)
                    row(f"{donor_w}_kv", layer, head, d, metric, per)
                    if metric != "kl":
                        row(f"{donor_w}_kv", layer, head, d, f"delta_{metric}", per - base[(base_w, metric)])
    return rows


# -- runs: inputs, experiments, run directories (what `memento-lens ablate` and the demo call) ---------------


class AblationTask(ABC):
    """What an ablation runs on: sequences sharing one structure, and that structure.

    Contract (the ablation never asks which implementation it has):

    * ``sequences(n, seed) -> [n, T]`` int64 token ids, every row with the layout of :attr:`layout`;
      deterministic in ``seed``. A task with one fixed sequence (a real trace) returns it whatever ``n``.
    * ``layout -> AblationLayout``: normal and restart visibility (the restart world from
      :func:`restart_world_config`), restart ranges, memento spans and the tokens scored per segment.
    * ``can_generate``: greedy generation of the scored mementos is meaningful (the toy, whose mementos are a
      function of their block); real traces are scored teacher-forced only.
    * ``name``, ``info`` (JSON-safe, recorded in the run's summary).
    """

    name: str = "task"
    can_generate: bool = False

    @abstractmethod
    def sequences(self, n: int, seed: int) -> np.ndarray: ...

    @property
    @abstractmethod
    def layout(self) -> AblationLayout: ...

    @property
    def info(self) -> dict[str, Any]:
        return {"task": self.name}


class ToyAblationTask(AblationTask):
    """The toy running-sum task: sampled sequences; segment c scores memento c's digits."""

    name = "toy"
    can_generate = True

    def __init__(self, toy_layout_=None):
        from memento_lens.runtime.toy.task import ToyLayout

        self.toy = toy_layout_ or ToyLayout()
        self._layout: AblationLayout | None = None

    def sequences(self, n: int, seed: int) -> np.ndarray:
        from memento_lens.runtime.toy.task import sample

        return sample(n, np.random.default_rng(seed), self.toy).token_ids

    @property
    def layout(self) -> AblationLayout:
        if self._layout is None:
            self._layout = toy_layout(self.toy)
        return self._layout


class TraceAblationTask(AblationTask):
    """One real Memento trace under the model's masking: segment c = block c + memento c (the answer after the
    last memento is the last segment), every token scored."""

    name = "trace"

    def __init__(self, trace: str | Path, tokenizer: Any, tokens: Any, masking: Any = None):
        from .features import ProbeInputError
        from .real import REAL_MASKING, build_passcode_trace, load_trace

        self.path = str(trace)
        self.masking = masking if masking is not None else REAL_MASKING  # the model's own, never the toy's
        pt = build_passcode_trace(
            load_trace(trace, tokenizer), tokenizer, tokens, self.masking, target_block=None, source=self.path
        )
        self.token_ids = pt.token_ids
        self._layout = layout_from_tokens(pt.token_ids, tokens.resolve_config(self.masking), tokens, pt.prompt_len)
        n_blocks = len(self._layout.memento_spans)
        if n_blocks < 2 or not self._layout.segments:
            raise ProbeInputError(
                f"--trace {trace}: needs at least 2 blocks with mementos for the restart ablation, found {n_blocks}"
            )

    def sequences(self, n: int, seed: int) -> np.ndarray:
        return self.token_ids[None, :]

    @property
    def layout(self) -> AblationLayout:
        return self._layout

    @property
    def info(self) -> dict[str, Any]:
        return {"task": self.name, "trace": self.path, "n_tokens": int(len(self.token_ids))}


def ablation_task(loaded: Any, trace: str | Path | None = None) -> AblationTask:
    """The ablation task for a model: the given ``trace`` (a Memento JSON file), else the toy task when the model
    says it is a toy (``LoadedModel.is_toy``, with the layout it was trained on)."""
    from .features import ProbeInputError

    if trace is not None:
        return TraceAblationTask(trace, loaded.tokenizer, loaded.require_tokens(), loaded.masking)
    if getattr(loaded, "is_toy", False):
        from memento_lens.runtime.toy.task import layout_of

        return ToyAblationTask(layout_of(loaded.model))  # toy-channel has a passcode segment per block
    raise ProbeInputError("--trace is required for a real model (a Memento JSON trace)")


@dataclass
class AblationInputs:
    """What an ablation runs on.

    Attributes:
        loaded: the :class:`~memento_lens.runtime.model.LoadedModel`.
        token_ids: ``[n, T]`` int sequences sharing one structure.
        layout: their :class:`AblationLayout`.
        info: the task's ``info`` plus ``sequences`` (recorded in the run's summary).
        task: the :class:`AblationTask` they came from.
    """

    loaded: Any
    token_ids: np.ndarray
    layout: AblationLayout
    info: dict[str, Any]
    task: AblationTask | None = None

    @property
    def can_generate(self) -> bool:
        return bool(self.task is not None and self.task.can_generate)


def ablation_inputs(
    model: str,
    *,
    trace: str | Path | None = None,
    samples: int = 2000,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    loaded: Any = None,
) -> AblationInputs:
    """Sequences and layout of the model's ablation task (:func:`ablation_task`): ``samples`` toy sequences, or
    the one sequence of a real Memento JSON ``trace``.

    ``loaded`` reuses an already loaded model (else ``model`` is loaded on ``device``/``dtype``).
    """
    if loaded is None:
        from memento_lens.runtime.model import load_model

        loaded = load_model(model, device=device, dtype=dtype)
    task = ablation_task(loaded, trace)
    ids = task.sequences(samples, seed)
    return AblationInputs(loaded, ids, task.layout, {**task.info, "sequences": int(len(ids))}, task)


def checkpoint_of(model: str) -> str:
    """``toy@step-000750`` -> ``step-000750``; ``""`` for a spec without a checkpoint."""
    return model.split("@", 1)[1] if "@" in model else ""


@dataclass
class AblationResult:
    """What an ablation produced (also written to ``run`` when there is one).

    Attributes:
        rows: ``ablations.parquet`` rows (:data:`ABLATION_COLUMNS`).
        blocks: restart only: per-segment detail (``ablation_blocks.parquet``); None for patching.
        info: the task, sequences and method (the run's ``*_summary.json`` ``info``).
        run: the run directory written (None when computed in memory).
        reused: ``run`` already held this same command's complete results; they were read, not recomputed.
    """

    rows: pd.DataFrame
    blocks: pd.DataFrame | None
    info: dict[str, Any]
    run: Any = None
    reused: bool = False

    @classmethod
    def read(cls, run: Any, summary: str, blocks: str | None = None) -> "AblationResult":
        """The results a complete ablation run holds (``summary``: its ``*_summary.json``)."""
        return cls(
            run.read_table(ABLATIONS),
            run.read_table(blocks) if blocks and run.has(blocks) else None,
            dict(run.read_json(summary).get("info", {})),
            run,
            reused=True,
        )


def restart_experiment(
    inputs: AblationInputs,
    model: str,
    *,
    generated: bool = True,
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> AblationResult:
    """The restart ablation on ``inputs``: teacher-forced scores per world and, for the toy with
    ``generated``, greedy memento generation in both worlds."""
    acc = restart_ablation(
        inputs.loaded.model,
        inputs.token_ids,
        inputs.layout,
        device=device,
        progress=(lambda d, t: progress("restart (teacher-forced, sequence x segment)", d, t)) if progress else None,
    )
    gen = None
    if generated and inputs.can_generate:
        gen = {
            w: toy_generated_accuracy(inputs.loaded.model, inputs.token_ids, inputs.layout, w, device=device)
            for w in ("normal", "restart")
        }
        if progress:
            progress("generated", 1, 1)
    rows = restart_rows(acc, inputs.layout, model, checkpoint_of(model), gen)
    info = dict(inputs.info)
    info["generated"] = (
        "greedy memento generation, block digits given"
        if gen is not None
        else "not run (real traces: the continuation is scored teacher-forced only)"
    )
    if no_ci_note(len(inputs.token_ids)):
        info["ci"] = no_ci_note(len(inputs.token_ids))
    return AblationResult(
        pd.DataFrame(rows, columns=ABLATION_COLUMNS),
        pd.DataFrame(restart_block_rows(acc, inputs.layout, model)),
        info,
    )


RESTART_SUMMARY = run_schema.RESTART_SUMMARY.path
RESTART_BLOCKS = run_schema.ABLATION_BLOCKS.path  # per-segment detail of the restart ablation
PATCH_SUMMARY = run_schema.PATCH_SUMMARY.path
PATCH_METHOD = (
    "forward hooks on self_attn.k_proj/v_proj splice the donor run's projections at earlier "
    "memento positions at one layer; every other layer pinned to the base run's own values"
)


def patch_experiment(
    inputs: AblationInputs,
    model: str,
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] = (),
    directions: Iterable[str] = tuple(DIRECTIONS),
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> AblationResult:
    """Causal KV patching on ``inputs`` at ``layers`` (None = all; negative from the end), all heads together
    plus each KV head in ``heads``, in each direction."""
    from .features import ProbeInputError, resolve_layers

    cfg = inputs.loaded.model.config
    ly = resolve_layers(list(layers or []), int(cfg.num_hidden_layers))
    n_kv = int(cfg.num_key_value_heads)
    hd = [ALL_HEADS, *heads]
    bad = [h for h in hd if h >= n_kv or (h < 0 and h != ALL_HEADS)]
    if bad:
        raise ProbeInputError(f"--heads: {bad} out of range ({n_kv} KV heads)")
    dirs = list(directions)
    acc = patch_sweep(
        inputs.loaded.model,
        inputs.token_ids,
        inputs.layout,
        ly,
        heads=hd,
        directions=dirs,
        device=device,
        progress=(lambda d, t: progress("patching (sequence x segment)", d, t)) if progress else None,
    )
    rows = patch_rows(acc, inputs.layout, model, ly, hd, dirs, checkpoint_of(model))
    info = dict(inputs.info, layers=ly, heads=hd, directions=dirs)
    if no_ci_note(len(inputs.token_ids)):
        info["ci"] = no_ci_note(len(inputs.token_ids))
    return AblationResult(pd.DataFrame(rows, columns=ABLATION_COLUMNS), None, info)


@dataclass
class RestartConfig:
    """Everything that changes a restart ablation's result (the run manifest's ``config``); validated here, so a
    notebook gets the same errors as the CLI.

    ``samples``: toy sequences (default 2000, ``quick`` 256; a real trace is its one sequence).
    """

    model: str = "toy"
    trace: str | None = None
    samples: int | None = None
    seed: int = 0
    generated: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    quick: bool = False

    def __post_init__(self):
        from memento_lens.runtime.validate import check_int

        self.trace = str(self.trace) if self.trace else None
        if self.samples is None:
            self.samples = 256 if self.quick else 2000
        check_int(self.samples, "--samples", min=MIN_CI_SEQUENCES)  # a mean with a CI needs two sequences
        check_int(self.seed, "--seed", min=0)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("quick")  # only chose the default sample count
        return d


@dataclass
class PatchConfig:
    """Everything that changes a KV-patching run's result; validated here (``samples`` default 1000, ``quick``
    128; ``layers`` None = all; ``heads``: KV heads patched one at a time besides all together)."""

    model: str = "toy"
    trace: str | None = None
    samples: int | None = None
    seed: int = 0
    layers: list[int] | None = None
    heads: list[int] = field(default_factory=list)
    directions: list[str] = field(default_factory=lambda: list(DIRECTIONS))
    device: str = "cpu"
    dtype: str = "float32"
    quick: bool = False

    def __post_init__(self):
        from memento_lens.runtime.validate import check_int

        self.trace = str(self.trace) if self.trace else None
        if self.samples is None:
            self.samples = 128 if self.quick else 1000
        check_int(self.samples, "--samples", min=MIN_CI_SEQUENCES)
        check_int(self.seed, "--seed", min=0)
        self.layers = [int(x) for x in self.layers] if self.layers else None
        self.heads = [int(x) for x in self.heads]
        self.directions = list(self.directions)
        check_directions(self.directions)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("quick")
        return d


def run_restart(
    out: str | Path,
    config: RestartConfig | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    **fields: Any,
) -> AblationResult:
    """The restart ablation into the run directory ``out`` (``ablations.parquet``, ``ablation_blocks.parquet``,
    ``restart_summary.json``). ``config``, or its fields as keywords."""
    from memento_lens.runtime.rundir.store import RunStore
    from memento_lens.runtime.validate import check_output_dir

    cfg = config if config is not None else RestartConfig(**fields)
    check_output_dir(out, "--out")
    store = RunStore.create(out, "ablate_restart", cfg.to_dict(), overwrite=overwrite, can_resume=False)
    if store.reused:  # this same command's complete run: its results, not a recomputation
        return AblationResult.read(store, RESTART_SUMMARY, RESTART_BLOCKS)
    with store:  # a failure removes an overwrite's new run; the old one is untouched
        inputs = ablation_inputs(
            cfg.model, trace=cfg.trace, samples=cfg.samples, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype
        )
        res = restart_experiment(inputs, cfg.model, generated=cfg.generated, device=cfg.device, progress=progress)
        store.write_table("ablations.parquet", res.rows)
        store.write_table(RESTART_BLOCKS, res.blocks)
        store.write_json(RESTART_SUMMARY, {"rows": json_rows(res.rows.to_dict("records")), "info": res.info})
        store.mark_complete(rows=len(res.rows))
    res.run = store
    return res


def run_patch(
    out: str | Path,
    config: PatchConfig | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    **fields: Any,
) -> AblationResult:
    """Causal KV patching into the run directory ``out`` (``ablations.parquet``, ``patch_summary.json``).
    ``config``, or its fields as keywords."""
    from memento_lens.runtime.rundir.store import RunStore
    from memento_lens.runtime.validate import check_output_dir

    cfg = config if config is not None else PatchConfig(**fields)
    check_output_dir(out, "--out")
    store = RunStore.create(out, "ablate_patch", cfg.to_dict(), overwrite=overwrite, can_resume=False)
    if store.reused:  # this same command's complete run: its results, not a recomputation
        return AblationResult.read(store, PATCH_SUMMARY)
    with store:  # a failure removes an overwrite's new run; the old one is untouched
        inputs = ablation_inputs(
            cfg.model, trace=cfg.trace, samples=cfg.samples, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype
        )
        res = patch_experiment(
            inputs,
            cfg.model,
            layers=cfg.layers,
            heads=cfg.heads,
            directions=cfg.directions,
            device=cfg.device,
            progress=progress,
        )
        store.write_table("ablations.parquet", res.rows)
        store.write_json(
            PATCH_SUMMARY,
            {"rows": json_rows(res.rows.to_dict("records")), "info": res.info, "method": PATCH_METHOD},
        )
        store.mark_complete(rows=len(res.rows))
    res.run = store
    return res
