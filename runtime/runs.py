"""Producing runs: replay or generate traces with captures and write them as run directories (resumable).

The format is :mod:`.rundir`'s; the captures are :mod:`.capture`'s. This module is the only one that joins
the replay/generator with the writer, so ``capture`` and ``replay`` do not import each other.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .capture import Capture
from .cluster import ModelSpec, ReplayJob, Sharding, Unit, UnitResult, UnitWorker
from .config import BlockMaskingConfig, MementoTokenIds
from .errors import ConfigError, InputFileError, OptionError
from .progress import bar_for
from .rundir.kv import CaptureSink
from .rundir.store import Manifest, RunStore
from .rundir.writer import RunWriter, trace_tables
from .trace import Trace


def replay_to_run(
    model: Any,
    traces: Sequence[Trace],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    out: str | Path,
    *,
    captures: Sequence[Capture] = (),
    run_config: dict[str, Any] | None = None,
    kind: str = "replay",
    source: str = "replay",
    tokenizer: Any = None,
    batch_size: int = 64,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    part_traces: int = 256,
    allow_unclosed: bool = False,
) -> RunStore:
    """Replay traces with captures and write a complete run directory (resumable).

    Malformed traces raise :class:`~memento_lens.runtime.replay.ReplayError` before anything is written;
    ``allow_unclosed`` accepts traces whose last block is still open (generations cut by their length limit).
    """
    from .model import kv_bytes_per_token, model_info
    from .replay import replay, validate_all
    from .validate import check_run_request

    check_run_request(model, batch_size=batch_size, captures=captures, out=out)
    ids = [t.trace_id for t in traces]
    if not ids:
        raise OptionError("no traces to replay")
    seen: set[str] = set()
    dup = next((i for i in ids if i in seen or seen.add(i)), None)
    if dup is not None:
        raise InputFileError(f"trace ids must be unique within a run; {dup!r} appears more than once")
    validate_all(model, traces, config, tokens, allow_unclosed)  # bad input fails before anything is written
    cfg = {
        "masking": config.to_dict(),
        "tokens": tokens.to_dict(),
        "captures": [c.describe() for c in captures],
        "model_info": model_info(model),
        **(run_config or {}),
    }
    store = RunStore.create(out, kind, cfg, overwrite=overwrite, resume=resume)
    if store.complete:
        return store
    with store:  # on failure an overwrite's new run is removed; the old run was never touched
        writer = RunWriter(store)
        done = writer.done_traces()
        todo = [t for t in traces if t.trace_id not in done]
        sink = CaptureSink()
        for c in captures:
            c.sink = sink
        bpt = kv_bytes_per_token(model)
        bar = bar_for(progress, sum(len(t) for t in todo), "replay", "tok")  # one bar over every part
        for k in range(0, len(todo), part_traces):
            chunk = todo[k : k + part_traces]
            results = replay(
                model,
                chunk,
                config,
                tokens,
                batch_size=batch_size,
                captures=captures,
                progress=bar,
                allow_unclosed=allow_unclosed,
            )
            tables = [trace_tables(r.trace, r.schedule, tokens, config.mode, source, bpt, tokenizer) for r in results]
            writer.write_part(tables, sink if captures else None)
        bar.close()
        writer.finish(n_traces=len(traces))
    return store


def generate_to_run(
    model: Any,
    prompts: Sequence[Sequence[int]],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    out: str | Path,
    *,
    sampling: Any = None,
    eos_token_id: int | None = None,
    captures: Sequence[Capture] = (),
    run_config: dict[str, Any] | None = None,
    tokenizer: Any = None,
    batch_size: int = 16,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    complete: bool = True,
    replace: Callable[[Manifest], bool] | None = None,
) -> RunStore:
    """Generate from prompts in batches and write each batch as a part (resumable); with ``captures`` the
    generated traces are replayed (teacher forcing rebuilds the identical cache) to capture K/V.

    Batch ``j`` samples with seed ``sampling.seed + j``, so a resumed run regenerates nothing it kept and
    produces what an uninterrupted run would have.

    Args:
        complete: mark the run complete after generation. ``False``: the caller adds more files and calls
            ``store.mark_complete`` itself (inside ``with store:``, so a failure removes an overwrite's new run);
            until then the run is incomplete and an overwrite's new run stays staged beside the old one.
        replace: passed to :meth:`RunStore.create` (the caller's own earlier runs it replaces without ``overwrite``).
    """
    import dataclasses

    from .generate import SamplingConfig, generate
    from .model import kv_bytes_per_token, model_info
    from .replay import replay
    from .validate import check_run_request

    check_run_request(model, batch_size=batch_size, captures=captures, out=out)
    if not prompts:
        raise OptionError("no prompts to generate from")
    sampling = sampling or SamplingConfig()
    cfg = {
        "masking": config.to_dict(),
        "tokens": tokens.to_dict(),
        "sampling": dataclasses.asdict(sampling),
        "captures": [c.describe() for c in captures],
        "model_info": model_info(model),
        "prompts": [list(map(int, p)) for p in prompts],
        **(run_config or {}),
    }
    store = RunStore.create(out, "generate", cfg, overwrite=overwrite, resume=resume, replace=replace)
    if store.complete:
        return store
    with store:  # on failure an overwrite's new run is removed; the old run was never touched
        writer = RunWriter(store)
        done = writer.done_traces()
        sink = CaptureSink()
        for c in captures:
            c.sink = sink
        bpt = kv_bytes_per_token(model)
        n_batches = -(-len(prompts) // batch_size)
        # One bar over the job, in decoding steps. A batch runs until its longest sequence stops, so the total
        # starts at max_new_tokens per batch and, after each batch, is re-estimated from the mean steps the
        # batches so far took (an ETA that assumed every batch hits the limit was 2x high on the toy).
        bar = bar_for(progress, n_batches * sampling.max_new_tokens, "generate", "step")
        steps_run, batches_run = 0, 0
        for j, k in enumerate(range(0, len(prompts), batch_size)):
            ids = [f"gen-{i:05d}" for i in range(k, min(k + batch_size, len(prompts)))]
            bar.set_description(f"generate batch {j + 1}/{n_batches}")
            start = bar.n
            if all(i in done for i in ids):  # resumed: the batch is already in the run
                bar.set_total(bar.total - sampling.max_new_tokens if bar.total else bar.total)
                continue
            batch_sampling = dataclasses.replace(sampling, seed=sampling.seed + j)
            results = generate(
                model,
                prompts[k : k + batch_size],
                config,
                tokens,
                sampling=batch_sampling,
                eos_token_id=eos_token_id,
                trace_ids=ids,
                progress=bar,
            )
            steps_run, batches_run = steps_run + (bar.n - start), batches_run + 1
            left = n_batches - (j + 1)
            bar.set_total(bar.n + round(left * steps_run / batches_run))
            tables = [
                trace_tables(r.trace, r.schedule, tokens, config.mode, "generate", bpt, tokenizer) for r in results
            ]
            if captures:  # the capture pass: say so rather than leave the bar standing at the batch's end
                bar.set_description(f"capture batch {j + 1}/{n_batches}")
                replay(model, [r.trace for r in results], config, tokens, captures=captures, strict=False)
            writer.write_part(tables, sink if captures else None)
        bar.close()
        if complete:
            writer.finish(n_traces=len(prompts))
        else:
            writer.merge()
    return store


# ---------------------------------------------------------------------------------------------------------
# run_generate: the library entry of `generate`
# ---------------------------------------------------------------------------------------------------------
@dataclass
class GenerateConfig:
    """Everything :func:`run_generate` needs; validates itself (the same errors from Python as from the CLI).

    Attributes:
        model: a :func:`~.model.load_model` spec.
        prompts: prompt texts (the chat template is applied when the tokenizer has one) or token-id lists; empty:
            every trace starts from the tokenizer's BOS.
        n: traces per prompt.
        masking: the :class:`BlockMaskingConfig` to run (a ``--config`` file); None: built from ``mode``, ``keep``,
            ``mask_delimiters`` and ``max_block_tokens`` by :func:`~.config.masking_for` (the one delimiter-default
            policy: the model's training where it records it, else the choice is required).
        sampling: decoding (seed, temperature, top-k/p, min-p, max new tokens).
        captures: capture specs (:func:`~.capture.default_captures`); checked against the model after loading.
        allow_unk: accept prompts the tokenizer turns mostly into ``<unk>``.
    """

    model: str = "toy"
    prompts: Sequence[Any] = ()
    n: int = 1
    mode: str = "memento"
    keep: int = 0
    mask_delimiters: bool | None = None
    max_block_tokens: int = 0
    masking: BlockMaskingConfig | None = None
    sampling: Any = None
    captures: Sequence[Capture] = ()
    batch_size: int = 16
    allow_unk: bool = False
    overwrite: bool = False
    resume: bool = False
    progress: Any = False
    device: str = "cpu"
    dtype: str | None = None
    run_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .sampling import SamplingConfig
        from .validate import check_int

        check_int(self.n, "--n", min=1)
        check_int(self.batch_size, "--batch-size", min=1)
        if self.overwrite and self.resume:
            raise OptionError("--resume and --overwrite together: choose one (continue the run, or replace it)")
        self.sampling = self.sampling if self.sampling is not None else SamplingConfig()
        self.prompts = list(self.prompts)
        for i, p in enumerate(self.prompts):
            if not isinstance(p, str) and not (
                isinstance(p, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            ):
                raise OptionError(f"prompt {i}: expected text or a list of token ids, got {type(p).__name__}")


@dataclass
class GenerateAccounting:
    """What :func:`run_generate` did: traces, the masking it ran, and notes for the user (warnings)."""

    traces: int
    masking: BlockMaskingConfig
    seconds: float
    notes: list[str] = field(default_factory=list)


def run_generate(out: str | Path, cfg: GenerateConfig) -> tuple[RunStore, GenerateAccounting]:
    """``memento-lens generate`` as a library call: load, check, estimate resources, generate with physical
    eviction (and captures), write the run. Every check runs before the run directory is touched."""
    from .config import delimiter_conflict, masking_for
    from .generate import encode_prompts
    from .model import load_model
    from .resources import check_resources, generation_estimate
    from .validate import MAX_UNK_SHARE, check_layers, check_output_dir, check_unk_share

    t0 = time.perf_counter()
    check_output_dir(out, "--out")
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    tokens = lm.require_tokens()
    masking = cfg.masking or masking_for(
        cfg.mode, cfg.keep, cfg.mask_delimiters, lm.masking, model_name=lm.name, max_block_tokens=cfg.max_block_tokens
    )
    notes = [f"warning: {w}"] if (w := delimiter_conflict(masking, lm.masking, lm.name)) else []
    for cap in cfg.captures:
        check_layers(getattr(cap, "layers", None), lm.model, cap.layers_option)
    texts = list(cfg.prompts)
    if not texts:
        bos = getattr(lm.tokenizer, "bos_token_id", None)
        if bos is None:
            raise OptionError("give at least one --prompt (the model's tokenizer has no BOS to start from)")
        texts = [[bos]]
    encoded = encode_prompts(lm.tokenizer, texts)
    check_resources(  # before n x prompts exist in memory: `--n 1000000000000` is refused here, with the estimate
        generation_estimate(
            lm.model,
            n_traces=len(encoded) * cfg.n,
            prompt_tokens=max(len(p) for p in encoded),
            max_new_tokens=cfg.sampling.max_new_tokens,
            batch_size=cfg.batch_size,
            captures=cfg.captures,
        ),
        out,
    )
    for cap in cfg.captures:  # e.g. --attention-queries beyond prompt + --max-new-tokens: refused, not silently empty
        cap.check_length(max(len(p) for p in encoded) + cfg.sampling.max_new_tokens)
    if not cfg.allow_unk:  # real text through a word-level toy tokenizer is almost all <unk>
        for i, (text, p) in enumerate(zip(texts, encoded)):
            if isinstance(text, str):
                check_unk_share(
                    p, lm.tokenizer, f"--prompt {i} ({text[:30]!r})", f"of model {lm.name!r}", MAX_UNK_SHARE
                )
    ids = [p for p in encoded for _ in range(cfg.n)]
    store = generate_to_run(
        lm.model,
        ids,
        masking,
        tokens,
        out,
        sampling=cfg.sampling,
        eos_token_id=lm.eos_token_id,
        captures=cfg.captures,
        run_config={"model": lm.name, **dict(cfg.run_config)},
        tokenizer=lm.tokenizer,
        batch_size=cfg.batch_size,
        overwrite=cfg.overwrite,
        resume=cfg.resume,
        progress=cfg.progress,
    )
    return store, GenerateAccounting(len(ids), masking, round(time.perf_counter() - t0, 2), notes)


# ---------------------------------------------------------------------------------------------------------
# run_replay: the library entry of `replay` (one process, or work units sharded over a Ray cluster)
# ---------------------------------------------------------------------------------------------------------
# Traces per work unit. A unit is the grain of scheduling, of failure and of resume, and one run part
# (parts/NNNNN/ + one K/V shard). benchmarks/bench_cluster.py measured Ray's cost per unit at a few ms on this
# machine against ~0.3 s of toy replay for 16 traces, so 16 keeps the overhead near 1% while a killed worker
# loses little (BENCHMARKS.md, "Cluster").
DEFAULT_UNIT_SIZE = 16


@dataclass
class ReplayConfig:
    """Everything :func:`run_replay` needs; validates itself (the same errors from Python as from the CLI).

    Attributes:
        traces: the traces to replay, in the order the run's tables keep (unique ids).
        model: a :func:`~.model.load_model` spec; each worker loads its own copy.
        masking: the :class:`BlockMaskingConfig`; None: the one the model was trained with (the toy), else an
            error (other models need it explicit).
        captures: capture specs (copied for each worker).
        unit_size: traces per work unit (the grain of scheduling, failure, resume; one run part each).
        workers, ray_address, gpus_per_worker, cpus_per_worker: where the units run (:class:`~.cluster.Sharding`,
            which owns these options' rules: 0/1 workers is this process, N > 1 a local Ray cluster).
        device, dtype, device_map: where each process puts the model (``device_map="auto"``: accelerate spreads
            the layers over the devices it sees, for a model larger than one device).
        threads: torch CPU threads per process (0: torch's default in one process, ``cpus_per_worker`` per actor).
        check_first: validate every trace before writing anything (default: in one process; a sharded run
            validates each unit on its worker instead, and a bad trace fails only its unit).
        max_retries: times a unit is retried on another actor after its actor died.
    """

    traces: Sequence[Trace]
    model: str = "toy"
    masking: BlockMaskingConfig | None = None
    captures: Sequence[Capture] = ()
    source: str = "replay"
    run_config: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    unit_size: int = DEFAULT_UNIT_SIZE
    allow_unclosed: bool = False
    overwrite: bool = False
    resume: bool = False
    progress: bool = False
    device: str = "cpu"
    dtype: str | None = None
    device_map: Any = None
    workers: int = 0
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    threads: int = 0
    check_first: bool | None = None
    max_retries: int = 2

    def __post_init__(self) -> None:
        from .validate import check_int

        check_int(self.batch_size, "--batch-size", min=1)
        check_int(self.unit_size, "--unit-size", min=1)
        check_int(self.max_retries, "max_retries", min=0)
        self.sharding.check_device(self.device, self.device_map)  # and the workers' options, on construction
        if self.device_map is not None:
            if not (self.device_map == "auto" or isinstance(self.device_map, Mapping)):
                raise OptionError(f"--device-map {self.device_map!r}: only 'auto' (or a dict from Python)")
            if str(self.device) != "cpu":
                raise OptionError("--device-map places the model itself; leave --device at its default")
        self.traces = list(self.traces)
        if not self.traces:
            raise OptionError("no traces to replay")
        seen: set[str] = set()
        dup = next((t.trace_id for t in self.traces if t.trace_id in seen or seen.add(t.trace_id)), None)
        if dup is not None:
            raise InputFileError(f"trace ids must be unique within a run; {dup!r} appears more than once")

    @property
    def sharded(self) -> bool:
        """Runs on Ray actors (``workers > 1`` or a cluster address)."""
        return self.sharding.sharded

    @property
    def sharding(self) -> Sharding:
        """The workers' options (:class:`~.cluster.Sharding` owns their rules)."""
        return Sharding(self.workers, self.ray_address, self.gpus_per_worker, self.cpus_per_worker, self.threads)

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(str(self.model), str(self.device), self.dtype, self.device_map)

    def units(self) -> list["Unit"]:
        """The work units: consecutive slices of ``unit_size`` traces (unit k is run part k)."""
        n = self.unit_size
        return [Unit(k, self.traces[i : i + n]) for k, i in enumerate(range(0, len(self.traces), n))]


@dataclass
class UnitFailure:
    """A unit that failed: its index, its traces, the trace at fault (when one is) and the error."""

    unit: int
    traces: list[str]
    trace: str | None
    error: str


@dataclass
class ReplayAccounting:
    """What :func:`run_replay` did.

    Attributes:
        units: work units in the run; ``units_run`` replayed by this call, ``units_kept`` found committed (resume).
        traces, tokens: traces in the run; tokens replayed by this call.
        seconds: wall time of the replay (model loading and cluster start-up included).
        retries: units re-run after their worker died; ``failures``: units that failed (trace named).
        workers: model processes used (1: this process).
    """

    units: int
    units_run: int = 0
    units_kept: int = 0
    traces: int = 0
    tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    failures: list[UnitFailure] = field(default_factory=list)
    workers: int = 1
    reused: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens_per_s": round(self.tokens_per_s, 1)}


class UnitsFailed(InputFileError):  # noqa: N818 - reads as what happened
    """Some units failed (their traces named); the others are written and the run is left incomplete."""

    def __init__(self, message: str, run: RunStore, accounting: ReplayAccounting):
        super().__init__(message)
        self.run = run
        self.accounting = accounting


def run_replay(
    out: str | Path,
    cfg: ReplayConfig,
    *,
    loaded: Any = None,
    pool: Any = None,
    on_unit: Callable[[UnitResult, ReplayAccounting], None] | None = None,
) -> tuple[RunStore, ReplayAccounting]:
    """Replay ``cfg.traces`` with captures into the run directory ``out``, unit by unit (resumable).

    One process (``workers`` 0/1) or Ray actors (``workers > 1`` / ``ray_address``) run the same
    :class:`UnitWorker` code, and the run directory is the same whatever the layout: unit ``k`` is run part
    ``k`` (its tables and K/V shard), committed by this process, so the tables read back in input order and
    the K/V are those of the single-process run bit for bit (same device and dtype).

    Args:
        loaded: an already loaded model (a :class:`~.model.LoadedModel`) for ``cfg.model``, reused here.
        pool: a started :class:`~.cluster.ReplayPool` to run on (kept open; tests and notebooks reuse one).
        on_unit: called after each unit is committed (or failed) with its result and the accounting so far.

    Returns:
        The run (a :class:`RunStore`) and a :class:`ReplayAccounting`.

    Raises:
        UnitsFailed: after every other unit finished, naming the traces of the units that failed (the run is
            left incomplete, its manifest's ``info.failed`` lists them); bad options and (in one process) bad
            traces fail before anything is written.
    """
    from .model import model_info
    from .replay import validate_all
    from .rundir.parts import adopt
    from .validate import check_run_request

    t0 = time.perf_counter()
    if cfg.sharded and pool is None:
        from .cluster import require_ray

        require_ray()  # without ray: the install command, before anything loads or is written
    if loaded is None:  # sharded: the actors load their own copies where Ray puts them; this one checks, on CPU
        loaded = (ModelSpec(str(cfg.model), "cpu", cfg.dtype) if cfg.sharded else cfg.model_spec).load()
    lm = loaded
    masking = cfg.masking if cfg.masking is not None else lm.masking
    if masking is None:
        raise ConfigError(
            f"model {lm.name!r} does not record its delimiter masking: give a BlockMaskingConfig "
            "(CLI: --keep-delimiters for Qwen3/OLMo3 style, --mask-delimiters for Phi-4 style)"
        )
    tokens = lm.require_tokens()
    check_run_request(lm.model, batch_size=cfg.batch_size, captures=cfg.captures, out=out)
    check_first = (not cfg.sharded) if cfg.check_first is None else cfg.check_first
    if check_first:
        validate_all(lm.model, cfg.traces, masking, tokens, cfg.allow_unclosed)  # before anything is written
    run_cfg = {
        "masking": masking.to_dict(),
        "tokens": tokens.to_dict(),
        "captures": [c.describe() for c in cfg.captures],
        "model_info": model_info(lm.model),
        "unit_size": cfg.unit_size,  # fixes the parts layout (unit k = part k), so resume keeps it
        **dict(cfg.run_config),
    }
    units = cfg.units()
    acct = ReplayAccounting(units=len(units), traces=len(cfg.traces))
    store = RunStore.create(out, "replay", run_cfg, overwrite=cfg.overwrite, resume=cfg.resume)
    if store.complete:
        acct.reused, acct.units_kept, acct.seconds = True, len(units), time.perf_counter() - t0
        return store, acct
    with store:  # on failure an overwrite's new run is removed; the old run was never touched
        writer = RunWriter(store)
        done = writer.done_traces()
        todo = [u for u in units if not all(t.trace_id in done for t in u.traces)]
        acct.units_kept = len(units) - len(todo)
        job = ReplayJob(
            str(store.path.absolute()),
            cfg.model_spec,
            masking,
            tokens,
            list(cfg.captures),
            cfg.batch_size,
            cfg.allow_unclosed,
            cfg.source,
        )
        by_index = {u.index: u for u in units}
        bar = bar_for(cfg.progress, sum(u.n_tokens for u in todo), "replay", "tok")  # one bar over all workers

        def commit(res: UnitResult) -> None:
            if res.ok:
                acct.units_run += 1
                acct.tokens += res.n_tokens
                production["units_run"] = acct.units_run
                adopt(store, res.records)  # the part's files, one manifest write: committed whole or not at all
            else:
                u = by_index[res.index]
                acct.failures.append(UnitFailure(res.index, [t.trace_id for t in u.traces], res.trace, res.error or ""))
            nfail = f", {len(acct.failures)} failed" if acct.failures else ""
            bar.set_description(f"replay {acct.units_kept + acct.units_run}/{acct.units} units{nfail}")
            bar.update(res.n_tokens if res.ok else 0)  # after the description: the bar redraws on update
            acct.seconds = time.perf_counter() - t0
            if on_unit is not None:
                on_unit(res, acct)

        production: dict[str, Any] = {
            "workers": 1,
            "ray_address": cfg.ray_address,
            "gpus_per_worker": cfg.gpus_per_worker,
            "device": cfg.device,
            "device_map": cfg.device_map if not isinstance(cfg.device_map, Mapping) else dict(cfg.device_map),
            "unit_size": cfg.unit_size,
            "units_kept": acct.units_kept,
            "units_run": 0,
            "retries": 0,
        }
        # how the run was produced, one entry per invocation; recorded now (a killed driver's entry stays, its
        # units_run kept current by every commit's manifest write)
        store.manifest.info.setdefault("production", []).append(production)
        store._save_manifest()
        if not cfg.sharded:
            worker = UnitWorker(cfg.threads)
            worker.use(cfg.model_spec, lm)
            for u in todo:
                commit(worker.run_unit(job, u))
        else:
            own = pool is None
            if own:
                pool = cfg.sharding.pool()
            try:
                production["workers"] = pool.size
                pool.check_sees(job.run_path)
                before = pool.retries  # a caller's pool counts over its whole life
                for res in pool.run(job, todo, max_retries=cfg.max_retries):
                    commit(res)
                    acct.retries = production["retries"] = pool.retries - before
            finally:
                if own:
                    pool.close()
        bar.close()
        acct.workers = production["workers"]
        acct.seconds = time.perf_counter() - t0
        production.update(retries=acct.retries, units_run=acct.units_run, seconds=round(acct.seconds, 3))
        store.manifest.info["failed"] = [dataclasses.asdict(f) for f in acct.failures]
        if not acct.failures:
            writer.finish(n_traces=len(cfg.traces))
            return store, acct
        store._save_manifest()
        first = acct.failures[0]
        names = ", ".join(repr(f.trace) for f in acct.failures if f.trace)
        failed = UnitsFailed(
            f"{len(acct.failures)} of {len(units)} work unit(s) failed"
            + (f" (trace(s) {names})" if names else "")
            + f"; first: unit {first.unit}: {first.error}.",
            store,
            acct,
        )
        if not acct.units_run and not acct.units_kept:
            raise failed  # nothing written: the new run is removed (with store: abort)
    failed.args = (
        failed.args[0] + f" The other units are written to {store.path} (incomplete; its manifest's info.failed "
        "names the traces): fix or drop those traces and rerun with --resume",
    )
    raise failed


__all__ = [
    "replay_to_run",
    "generate_to_run",
    "run_generate",
    "GenerateConfig",
    "GenerateAccounting",
    "run_replay",
    "ReplayConfig",
    "ReplayAccounting",
    "ReplayJob",
    "ModelSpec",
    "Unit",
    "UnitResult",
    "UnitFailure",
    "UnitWorker",
    "UnitsFailed",
    "DEFAULT_UNIT_SIZE",
]
