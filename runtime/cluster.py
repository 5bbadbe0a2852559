"""Model work sharded over a Ray cluster: a pool of model actors with a work queue (optional: ``pip install ray``).

Two kinds of job run on it: replay with capture (:class:`ReplayJob`, units of traces) and the passcode probes'
feature extraction (``probes.sharded.FeatureJob``, units of sample rows). A job is any object with
``run_on(worker, unit, worker=name)`` returning a result with ``index``, ``ok`` and ``error``; the pool only
schedules, retries and reports. :class:`Sharding` owns the options' rules (``--workers``, ``--ray-address``,
``--gpus-per-worker``) for every command that takes them.

Each actor is a :class:`~.runs.UnitWorker` (the code the single-process path runs) in its own process: it
loads the model once (on the GPU Ray gives it, or spread by ``device_map``), replays the units it is handed
and writes each as a part of the one run directory through :mod:`.rundir.parts`; the driver
(:func:`~.runs.run_replay`) commits each part into the manifest, the run's only writer.

Why plain actors and a queue here rather than Ray Data ``map_batches``: a unit is already a batch that writes
its own part, so the driver never needs the rows back; and the scheduling rules the run format relies on are
explicit in a few lines: a unit whose actor dies is retried on another actor (counted), a unit whose trace is
bad fails alone with the trace named while the others go on (Ray Data would fail the dataset, or drop blocks
past ``max_errored_blocks`` without saying which trace), units are numbered before they start (unit k = part
k, whatever finishes first) and a resumed run skips committed units. Ray Data's streaming would matter for
data larger than the driver's memory; traces are token ids, and 228K traces of 32K tokens fit a driver.

Nothing here is imported unless a sharded run is asked for, and ``import ray`` happens inside the functions:
without ``ray`` the single-process path works and a sharded request fails with the install command.
"""

from __future__ import annotations

import copy
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .capture import Capture
from .config import BlockMaskingConfig, MementoTokenIds
from .errors import MementoLensError, OptionError
from .rundir.kv import CaptureSink
from .rundir.writer import RunWriter, trace_tables
from .trace import Trace

INSTALL = 'pip install "memento-lens[ray]"  (or: pip install ray==2.60.0)'


@dataclass(frozen=True)
class Sharding:
    """Where a command's model work runs: this process (the default) or Ray model actors.

    Attributes:
        workers: 0 or 1: one process, no Ray; N > 1: a local Ray cluster with N model actors (with
            ``ray_address``: N actors on that cluster; 0 there: as many as its resources allow).
        ray_address: join an existing Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``).
        gpus_per_worker, cpus_per_worker: Ray resources per model actor.
        threads: torch CPU threads per actor (0: ``cpus_per_worker``).
    """

    workers: int = 0
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    threads: int = 0

    def __post_init__(self) -> None:
        from .validate import check_float, check_int

        check_int(self.workers, "--workers", min=0)
        check_int(self.threads, "--threads", min=0)
        check_float(self.gpus_per_worker, "--gpus-per-worker", min=0)
        check_float(self.cpus_per_worker, "cpus_per_worker", min=0)
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise OptionError(
                f"--ray-address {self.ray_address!r}: give a Ray address (auto, host:6379, ray://host:10001)"
            )
        if self.gpus_per_worker and not self.sharded:
            raise OptionError("--gpus-per-worker needs --workers N (N > 1) or --ray-address")

    @property
    def sharded(self) -> bool:
        """Runs on Ray actors (``workers > 1`` or a cluster address)."""
        return self.workers > 1 or self.ray_address is not None

    def check_device(self, device: str, device_map: Any = None) -> None:
        """Refuse GPUs per actor that the model would not use."""
        if self.gpus_per_worker and str(device) == "cpu" and device_map is None:
            raise OptionError(
                "--gpus-per-worker: the actors' GPUs would sit idle; add --device cuda (or --device-map auto)"
            )

    def pool(self) -> "ReplayPool":
        """Start the pool of model actors these options ask for (``ray`` must be installed)."""
        return ReplayPool(
            self.workers,
            ray_address=self.ray_address,
            gpus_per_worker=self.gpus_per_worker,
            cpus_per_worker=self.cpus_per_worker,
            threads=self.threads,
        )


# -- units: the code every worker runs (one process or a Ray actor) ---------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """How a process loads the model (a worker loads its own copy): :func:`~.model.load_model`'s arguments."""

    spec: str
    device: str = "cpu"
    dtype: str | None = None
    device_map: Any = None  # None | "auto" | {module name: device}

    def load(self) -> Any:
        from .model import load_model

        return load_model(self.spec, device=self.device, dtype=self.dtype, device_map=self.device_map)


@dataclass
class Unit:
    """One work unit: run part ``index``, these traces."""

    index: int
    traces: Sequence[Trace]

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.traces)


@dataclass
class ReplayJob:
    """What every unit of a run needs besides its traces (sent once to each worker)."""

    run_path: str  # where parts are written (an overwrite's staging directory until the swap)
    model: ModelSpec
    masking: BlockMaskingConfig
    tokens: MementoTokenIds
    captures: Sequence[Capture]
    batch_size: int
    allow_unclosed: bool
    source: str

    def run_on(self, worker: "UnitWorker", unit: Unit, worker_name: str = "local") -> "UnitResult":
        """Replay ``unit`` on ``worker`` (the pool's entry point for any job)."""
        return worker.run_unit(self, unit, worker_name)


@dataclass
class UnitResult:
    """What a unit did: the files it wrote (for the driver to commit), or why it failed."""

    index: int
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_tokens: int = 0
    seconds: float = 0.0
    worker: str = ""
    error: str | None = None
    trace: str | None = None  # the trace at fault, when one is

    @property
    def ok(self) -> bool:
        return self.error is None


class UnitWorker:
    """Replays units in one process with one model: the single-process path and each Ray actor run this same
    code (schedule, :func:`~.replay.replay`, captures, :class:`~.rundir.writer.RunWriter` parts)."""

    def __init__(self, threads: int = 0):
        self.threads = threads
        self._model: tuple[ModelSpec, Any] | None = None

    def use(self, spec: ModelSpec, loaded: Any) -> None:
        """Use an already loaded model for ``spec`` (the single-process path loads it once for validation)."""
        self._model = (spec, loaded)

    def loaded(self, spec: ModelSpec) -> Any:
        if self._model is None or self._model[0] != spec:
            self._model = None  # free the old model before loading the next
            if self.threads > 0:
                import torch

                torch.set_num_threads(self.threads)
            self._model = (spec, spec.load())
        return self._model[1]

    def run_unit(self, job: ReplayJob, unit: Unit, worker: str = "local") -> UnitResult:
        """Replay one unit and write it as run part ``unit.index``; failures come back named, not raised."""
        from .model import kv_bytes_per_token
        from .replay import replay, validate
        from .rundir.parts import PartStore
        from .schedule import compute_schedule

        t0 = time.perf_counter()
        lm = self.loaded(job.model)
        vocab = getattr(lm.model.config, "vocab_size", None)
        for t in unit.traces:  # each trace checked alone, so a failure names it
            try:
                s = compute_schedule(t.token_ids, job.masking, job.tokens, prompt_len=t.prompt_len)
                validate(t, s, vocab, job.allow_unclosed)
            except Exception as exc:  # noqa: BLE001 - reported per unit; the run goes on
                return UnitResult(unit.index, worker=worker, error=one_line(exc), trace=t.trace_id)
        captures = copy.deepcopy(list(job.captures))  # fresh sinks; the job's specs stay untouched
        sink = CaptureSink()
        for c in captures:
            c.sink = sink
        try:
            results = replay(
                lm.model,
                unit.traces,
                job.masking,
                job.tokens,
                batch_size=job.batch_size,
                captures=captures,
                allow_unclosed=job.allow_unclosed,
            )
            bpt = kv_bytes_per_token(lm.model)
            tables = [
                trace_tables(r.trace, r.schedule, job.tokens, job.masking.mode, job.source, bpt, lm.tokenizer)
                for r in results
            ]
            part = PartStore(job.run_path)
            RunWriter(part).write_part(tables, sink if captures else None, part=unit.index)
        except Exception as exc:  # noqa: BLE001
            return UnitResult(unit.index, worker=worker, error=one_line(exc))
        return UnitResult(unit.index, part.take_records(), unit.n_tokens, time.perf_counter() - t0, worker)


def one_line(exc: BaseException) -> str:
    """A unit's failure in one line: a user error's own message, anything else prefixed with its class."""
    text = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MementoLensError) else text


# -- the Ray pool ------------------------------------------------------------------------------------------
def require_ray() -> Any:
    """The ``ray`` module, or an :class:`OptionError` with the install command."""
    try:
        import ray
    except ImportError:
        raise OptionError(
            f"--workers / --ray-address run on a Ray cluster, and ray is not installed here; install it: {INSTALL}"
        ) from None
    return ray


class _Actor(UnitWorker):
    """The Ray actor: a :class:`UnitWorker` that can say who it is."""

    def whoami(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname()}

    def sees(self, path: str) -> bool:
        return os.path.isfile(os.path.join(path, "manifest.json"))

    def run(self, job: Any, unit: Any) -> Any:
        return job.run_on(self, unit, f"{self.whoami()['host']}:{os.getpid()}")


class ReplayPool:
    """``size`` model actors on a Ray cluster (a local one started here, or the one at ``ray_address``).

    Args:
        size: actors (0 with ``ray_address``: as many as the cluster's GPUs / CPUs allow).
        gpus_per_worker, cpus_per_worker: Ray resources per actor.
        threads: torch threads per actor (0: ``max(1, int(cpus_per_worker))``).

    Attributes:
        retries: units re-run because their actor died (over this pool's life).
        on_dispatch: optional ``f(pool, actor, unit)`` called after a unit is handed to an actor (tests kill
            the actor's process there).
    """

    def __init__(
        self,
        size: int,
        *,
        ray_address: str | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        threads: int = 0,
    ):
        ray = require_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if ray_address is not None:
                ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
            else:  # a local cluster just big enough for the actors
                need = max(1, int(round(size * cpus_per_worker)))
                ray.init(num_cpus=need, include_dashboard=False, log_to_driver=False)
            self._started = True
        if size <= 0:
            res = ray.cluster_resources()
            size = (
                int(res.get("GPU", 0) // gpus_per_worker)
                if gpus_per_worker
                else int(res.get("CPU", 1) // max(cpus_per_worker, 1e-9))
            )
            if size < 1:
                raise OptionError(f"--ray-address: the cluster has no room for one worker ({res})")
        self._options = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker, "max_restarts": 0}
        self._threads = threads or max(1, int(cpus_per_worker))
        self._remote = ray.remote(_Actor)
        self.actors = [self._spawn() for _ in range(size)]
        self.retries = 0
        self.on_dispatch: Any = None
        self.start_timeout = 600.0  # seconds for every actor to start (a process, imports; not the model)

    @property
    def size(self) -> int:
        return len(self.actors)

    def _spawn(self) -> Any:
        return self._remote.options(**self._options).remote(self._threads)

    def pids(self) -> list[int]:
        return [w["pid"] for w in self._ray.get([a.whoami.remote() for a in self.actors])]

    def check_sees(self, run_path: str) -> None:
        """Every actor must see the run directory (one filesystem on every node), or the parts would be lost."""
        refs = [a.sees.remote(run_path) for a in self.actors]
        _, pending = self._ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout)
        if pending:  # never placed: the cluster lacks the resources asked for (or start-up hangs)
            raise OptionError(
                f"{len(pending)} of {len(refs)} Ray workers did not start within {self.start_timeout:.0f} s; each "
                f"asks for {self._options['num_cpus']} CPU and {self._options['num_gpus']} GPU, the cluster has "
                f"{self._ray.cluster_resources()}: use fewer --workers or less --gpus-per-worker"
            )
        seen = self._ray.get(refs)
        if not all(seen):
            raise OptionError(
                f"{run_path}: {seen.count(False)} of {len(seen)} Ray workers cannot see this run directory; "
                "--out must be on a filesystem every node mounts at the same path (NFS, a shared volume)"
            )

    def run(self, job: Any, units: Sequence[Any], *, max_retries: int = 2) -> Iterator[Any]:
        """Hand ``units`` to free actors one at a time; yield each result as it arrives (any order).

        ``job``: a :class:`ReplayJob` or any object with ``run_on(worker, unit, worker_name)``; ``units``: objects
        with an ``index``. A unit that exhausts its retries comes back as a failed :class:`UnitResult`.

        An actor that dies is replaced and its unit goes back to the front of the queue, for the next free
        actor, at most ``max_retries`` times (then it is yielded as failed). A fresh actor gets work only once it
        answers, so a replacement that cannot be placed never holds a unit.
        """
        from ray.exceptions import RayError, RayTaskError

        # A unit's own errors come back as failed results (UnitWorker.run_unit catches them), so an error from
        # ray.get is the worker's: its process died (killed, crashed, or by Ray's memory monitor:
        # OutOfMemoryError is not a RayActorError). RayTaskError (our code raising past run_unit) is a bug.
        died = RayError

        ray = self._ray
        job_ref = ray.put(job)
        queue = deque(units)
        attempts: dict[int, int] = {}
        idle = list(self.actors)
        running: dict[Any, tuple[Any, Unit]] = {}
        starting: dict[Any, Any] = {}
        spare = 2 * len(self.actors) + max_retries  # replacements this run may start (a node out of memory)
        last_death = ""

        def replace(dead: Any, exc: BaseException) -> None:
            nonlocal spare, last_death
            self.actors.remove(dead)
            last_death = (str(exc).splitlines() or [type(exc).__name__])[0]
            if spare > 0:
                spare -= 1
                fresh = self._spawn()
                self.actors.append(fresh)
                starting[fresh.whoami.remote()] = fresh

        while queue or running:
            while queue and idle:
                actor, unit = idle.pop(0), queue.popleft()
                running[actor.run.remote(job_ref, unit)] = (actor, unit)
                if self.on_dispatch is not None:
                    self.on_dispatch(self, actor, unit)
            if not running and not starting:
                raise OptionError(
                    f"every Ray worker died and no replacement could start ({len(queue)} unit(s) left; last: "
                    f"{last_death}); the committed units are kept: rerun with --resume"
                )
            ready, _ = ray.wait([*running, *starting], num_returns=1)
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(actor)
                except RayTaskError:
                    raise
                except died as exc:
                    replace(actor, exc)
                continue
            actor, unit = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError:
                raise
            except died as exc:
                replace(actor, exc)
                attempts[unit.index] = attempts.get(unit.index, 0) + 1
                if attempts[unit.index] > max_retries:
                    yield UnitResult(
                        unit.index, error=f"its Ray worker died {attempts[unit.index]} times ({last_death})"
                    )
                else:
                    self.retries += 1
                    queue.appendleft(unit)
                continue
            idle.append(actor)
            yield result

    def close(self) -> None:
        """Stop the actors (and the local cluster, when this pool started it)."""
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        if self._started:
            self._ray.shutdown()

    def __enter__(self) -> "ReplayPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = [
    "Sharding",
    "ModelSpec",
    "Unit",
    "ReplayJob",
    "UnitResult",
    "UnitWorker",
    "ReplayPool",
    "require_ray",
    "one_line",
    "INSTALL",
]
