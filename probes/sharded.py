"""The passcode probes' feature extraction sharded over Ray model actors (``probe passcode --workers N`` /
``--ray-address``).

A data replicate's sample rows are cut into work units of whole forwards (``k x rows_per_forward`` rows of one
world, :class:`~.features.KVPlan`); each actor loads the model once and runs :func:`~.features.extract_memento_kv`,
the single-process code, on its slice with the whole set's plan, so every row goes through the same forward
shapes as in one process and the features are the same bit for bit on CPU. The driver puts the slices back in
row order; the probes and the run directory never see the sharding (the run's summary records it).

The pool (:class:`memento_lens.runtime.cluster.ReplayPool`) retries a unit whose actor died on another actor;
features are returned to the driver (a few MB per unit), which caches them in the run directory as one process
does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from memento_lens.runtime.cluster import ModelSpec, Sharding, one_line
from memento_lens.runtime.errors import MementoLensError
from memento_lens.runtime.forwards import DEFAULT_MEMORY_BUDGET

from .features import MementoFeatures, extract_memento_kv, plan_memento_kv

# Forwards per work unit: a unit is the grain of retry; at SmolLM2's ~0.4 s per row and world on 2 cores, 4
# forwards of 8 rows are ~13 s, against Ray's few ms per unit (BENCHMARKS.md, "Cluster").
FORWARDS_PER_UNIT = 4


@dataclass(frozen=True)
class RowUnit:
    """Rows ``start .. stop`` of one world's sample set (work unit ``index``)."""

    index: int
    world: str
    start: int
    stop: int


@dataclass
class WorldInputs:
    """One world's replay: token ids ``[n, T]`` under one visibility ``[T, T]``, and its plan."""

    ids: np.ndarray
    visible: torch.Tensor
    varying_tokens: np.ndarray
    rows_per_forward: int


@dataclass
class FeatureJob:
    """What every unit needs besides its rows (sent once to each actor)."""

    model: ModelSpec
    worlds: dict[str, WorldInputs]
    positions: dict[int, np.ndarray]
    pairs: list[tuple[int, int]]
    prefix_len: int
    memory_budget: int

    def run_on(self, worker: Any, unit: RowUnit, worker_name: str = "local") -> "FeatureResult":
        """Features of ``unit``'s rows (failures come back named, not raised)."""
        t0 = time.perf_counter()
        try:
            lm = worker.loaded(self.model)
            w = self.worlds[unit.world]
            rows = w.ids[unit.start : unit.stop]
            feats = extract_memento_kv(
                lm.model,
                rows,
                w.visible,
                self.positions,
                sorted({ly for _, ly in self.pairs}),
                np.zeros((len(rows), 1), dtype=np.int64),  # labels stay with the driver
                wanted=self.pairs,
                batch_size=w.rows_per_forward,
                device=self.model.device,
                prefix_len=self.prefix_len,
                memory_budget=self.memory_budget,
                varying_tokens=w.varying_tokens,
            )
        except Exception as exc:  # noqa: BLE001 - reported per unit
            return FeatureResult(unit.index, error=f"{unit.world} rows {unit.start}..{unit.stop - 1}: {one_line(exc)}")
        return FeatureResult(unit.index, feats.kv, unit.stop - unit.start, time.perf_counter() - t0, worker_name)


@dataclass
class FeatureResult:
    """A unit's features ``{(memento block, layer): [rows, kv_heads, P, 2 * d_head]}``, or why it failed."""

    index: int
    kv: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0
    worker: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ShardingAccounting:
    """What the sharded extraction did (summed over data replicates): units, rows, retries, workers, seconds."""

    workers: int = 0
    units: int = 0
    rows: int = 0
    retries: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class ShardedExtractor:
    """Feature extraction on a pool of Ray model actors; use as a context manager (the pool closes on exit).

    Args:
        sharding: where the actors run (:class:`~memento_lens.runtime.cluster.Sharding`, must be sharded).
        model: how each actor loads the model (the driver's model is used only to plan).
        pool: an already started pool (kept open; tests reuse one).
    """

    def __init__(self, sharding: Sharding, model: ModelSpec, *, pool: Any = None, max_retries: int = 2):
        self.sharding, self.model, self.max_retries = sharding, model, max_retries
        self._own = pool is None
        self.pool = pool if pool is not None else sharding.pool()
        self.accounting = ShardingAccounting(workers=self.pool.size)

    def __enter__(self) -> "ShardedExtractor":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._own:
            self.pool.close()

    def extract(
        self,
        planner: torch.nn.Module,
        inputs: Mapping[str, tuple[np.ndarray, torch.Tensor]],
        positions: Mapping[int, np.ndarray],
        pairs: Sequence[tuple[int, int]],
        labels: np.ndarray,
        *,
        batch_size: int,
        prefix_len: int,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, MementoFeatures]:
        """``{world: MementoFeatures}`` for ``inputs`` (``{world: (ids [n, T], visible [T, T])}``), the same as
        :func:`~.features.extract_memento_kv` per world in one process.

        ``planner``: a model with the actors' config (the driver's copy), to plan the forwards.
        ``progress(world, rows done, rows)``. Raises :class:`MementoLensError` naming the first failed unit.
        """
        t0 = time.perf_counter()
        worlds: dict[str, WorldInputs] = {}
        units: list[RowUnit] = []
        for world, (ids, visible) in inputs.items():
            ids = np.asarray(ids)
            plan = plan_memento_kv(
                planner,
                ids,
                visible,
                positions,
                list(pairs),
                batch_size=batch_size,
                prefix_len=prefix_len,
                memory_budget=memory_budget,
            )
            worlds[world] = WorldInputs(ids, visible, plan.varying_tokens, plan.rows_per_forward)
            n = len(ids)
            # all pairs shared (the restart world): one unit, one row's forward, broadcast
            step = n if not plan.varying else plan.rows_per_forward * FORWARDS_PER_UNIT
            for s in range(0, n, step):
                units.append(RowUnit(len(units), world, s, min(s + step, n)))
        job = FeatureJob(self.model, worlds, dict(positions), list(pairs), prefix_len, memory_budget)
        done: dict[int, FeatureResult] = {}
        rows_done = {w: 0 for w in worlds}
        before = self.pool.retries
        for res in self.pool.run(job, units, max_retries=self.max_retries):
            if not res.ok:
                raise MementoLensError(f"feature extraction failed in work unit {res.index}: {res.error}")
            done[res.index] = res
            unit = units[res.index]
            rows_done[unit.world] += unit.stop - unit.start
            if progress is not None:
                progress(unit.world, rows_done[unit.world], len(worlds[unit.world].ids))
        out: dict[str, MementoFeatures] = {}
        for world in worlds:
            mine = [u for u in units if u.world == world]
            kv = {pair: torch.cat([done[u.index].kv[pair] for u in mine]) for pair in pairs}
            out[world] = MementoFeatures(
                kv=kv,
                labels=torch.as_tensor(np.asarray(labels), dtype=torch.long),
                positions={mb: np.asarray(p) for mb, p in positions.items()},
            )
        acct = self.accounting
        acct.units += len(units)
        acct.rows += sum(u.stop - u.start for u in units)
        acct.retries += self.pool.retries - before
        acct.seconds += time.perf_counter() - t0
        return out


__all__ = ["FORWARDS_PER_UNIT", "FeatureJob", "FeatureResult", "RowUnit", "ShardedExtractor", "ShardingAccounting"]
