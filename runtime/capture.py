"""Captures during replay, and writing runs to a run directory.

Capture specs are small dataclasses on a two-level base: :class:`Capture` (the replay calls ``attach`` once,
``before_evict`` before each eviction and ``after_chunk`` after each forward) and :class:`KVCapture` (layer
selection and the sink); a new capture is one method. Hooks live in ``attach`` (a context manager) and are
removed in ``finally``.

Which path for what (see ECOSYSTEM.md):

* K/V are read straight from the cache (``SlotCache.gather``): no hooks, no extra forward; the cached keys
  are post-norm, post-RoPE, which is what later tokens attend to.
* Attention weights use HF's own eager attention for the chosen layers: ``attach`` switches the model's
  attention kernel to ``eager`` for the replay (eager and sdpa agree within 3e-7 with float masks) and a
  forward hook on each chosen ``self_attn`` reads the weights it already returns. This sees the real
  incremental cache (physical eviction and all), costs nothing extra beyond eager attention, and needs no
  wrapper. TransformerLens' ``TransformerBridge`` would give ``hook_pattern`` but wraps the model in a second
  object (and mutates the tokenizer) and runs its own full-sequence forward, which does not see our
  physically evicted cache; nnsight can read ``self_attn.output[1]`` too but adds ~1 ms per trace on CPU and
  a 6 s import for the same tensor.

The memento variants (docs/ARCHITECTURE.md): ``normal`` = the memento's K/V as the memento-mode run
computed it (its block visible; with keep 0 the ``<|summary_end|>`` token itself is computed after the
eviction that fires at it); ``restart`` = the same memento tokens recomputed with the block (delimiters
included) and everything from ``<|summary_start|>`` on removed from the cache; ``evicted_block`` = the
evicted range's K/V at eviction time. In a restart-mode run ``restart`` is the run's own (recomputed) memento
K/V and ``normal`` the memento tokens as first computed, before the rewind: ``[<|summary_start|>,
<|summary_end|>)`` for a restart fired by ``<|summary_end|>`` (that token is only ever computed after the
eviction), the whole memento for a deferred flush. Mementos a restart run never rewinds are stored as
``normal`` (plus the ``restart`` counterfactual).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .config import BlockMaskingConfig, MementoTokenIds
from .errors import InputFileError, OptionError
from .hf_paths import ATTN_IMPLEMENTATION_ATTR, ATTN_WEIGHTS_OUTPUT_INDEX, SELF_ATTN_ATTR, decoder_layers
from .kvstore import AttnItem, CaptureSink, KVItem, KVKey
from .rundir import schema
from .schedule import EvictionEvent
from .store import RunStore
from .trace import Trace, assign_roles

RUN_TABLES = tuple(t.name for t in schema.TRACE_TABLES)  # defined in rundir/schema.py


# ---------------------------------------------------------------------------------------------------------
# Capture specs
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Capture:
    """Level 1: the replay's three callbacks (all no-ops). ``sink`` is set by the run writer."""

    sink: CaptureSink = field(default_factory=CaptureSink, repr=False, compare=False)
    # Callbacks run in ascending order; captures that read the forward's own outputs run first, before any
    # capture runs a counterfactual forward of its own.
    order = 0

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        yield

    def before_evict(self, view: Any, position: int, events: Sequence[EvictionEvent]) -> None:
        """Called before the events at ``position`` remove their ranges from the cache."""

    def after_chunk(self, view: Any, start: int, end: int) -> None:
        """Called after tokens ``[start, end)`` were fed (before any compaction)."""

    def describe(self) -> dict[str, Any]:
        return {
            "capture": type(self).__name__,
            **{k: v for k, v in self.__dict__.items() if k != "sink" and not k.startswith("_")},
        }


@dataclass
class KVCapture(Capture):
    """Level 2: K/V captures over chosen layers (None = all)."""

    layers: tuple[int, ...] | None = None

    def emit(
        self, view: Any, variant: str, block: int, start: int, end: int, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Split a batched capture ``[batch, kv_heads, n, d]`` per trace into the sink."""
        layer_ids = list(range(len(kv))) if self.layers is None else list(self.layers)
        for li, (k, v) in zip(layer_ids, kv):
            for row, trace in enumerate(view.traces):
                self.sink.add_kv(
                    KVItem(
                        KVKey(trace.trace_id, li, variant, block),
                        start,
                        end,
                        k[row : row + 1].detach().cpu().clone(),
                        v[row : row + 1].detach().cpu().clone(),
                    )
                )


@dataclass
class MementoKV(KVCapture):
    """Every memento's K/V (``<|summary_start|>`` .. ``<|summary_end|>``), normal and restart variants.

    Attributes:
        counterfactual: also store the variant the run did not compute (restart for memento runs).
    """

    counterfactual: bool = True

    def after_chunk(self, view: Any, start: int, end: int) -> None:
        sched = view.schedule
        for span in sched.blocks:
            s, e = span.summary_start, span.summary_end
            if s is None or e is None or span.end is None or not start <= e < end or s < sched.prompt_len:
                continue
            rewound = s in view.rewound
            if not rewound and any(ev.rewind_to == s for ev in sched.evictions):
                continue  # first pass of a memento that will be recomputed: before_evict stores it as normal
            own = view.cache.gather(range(s, e + 1), self.layers)
            self.emit(view, "restart" if rewound else "normal", span.block, s, e + 1, own)
            if self.counterfactual and not rewound:
                pos = view.cache.pos
                keep = (pos >= 0) & (pos < s) & ~((pos >= span.start) & (pos <= span.end))
                self.emit(view, "restart", span.block, s, e + 1, view.recompute(keep, s, e + 1, self.layers))

    def before_evict(self, view: Any, position: int, events: Sequence[EvictionEvent]) -> None:
        if not self.counterfactual:
            return
        for ev in events:
            s = ev.rewind_to
            if s is None or position <= s:
                continue
            span = next((b for b in view.schedule.blocks if b.summary_start == s), None)
            if span is not None and span.summary_end is not None:
                end = min(position, span.summary_end + 1)
                self.emit(view, "normal", span.block, s, end, view.cache.gather(range(s, end), self.layers))


@dataclass
class EvictedBlockKV(KVCapture):
    """The evicted range's K/V at the moment it is evicted."""

    def before_evict(self, view: Any, position: int, events: Sequence[EvictionEvent]) -> None:
        for ev in events:
            if ev.end > ev.start and ev.block is not None:
                self.emit(
                    view,
                    "evicted_block",
                    ev.block,
                    ev.start,
                    ev.end,
                    view.cache.gather(range(ev.start, ev.end), self.layers),
                )


@dataclass
class AttentionWeights(Capture):
    """Attention weights ``[1, heads, n_tokens]`` (over all positions; evicted and future = 0) of chosen queries.

    Attributes:
        layers: which layers.
        queries: query positions (None = every position; small traces only).
    """

    layers: tuple[int, ...] = (0,)
    queries: tuple[int, ...] | None = None
    order = -1
    _last: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        cfg = model.config
        before = getattr(cfg, ATTN_IMPLEMENTATION_ATTR)
        handles = []
        layers = decoder_layers(model)
        try:
            setattr(cfg, ATTN_IMPLEMENTATION_ATTR, "eager")
            for li in self.layers:
                attn = getattr(layers[li], SELF_ATTN_ATTR)
                handles.append(attn.register_forward_hook(self._hook(li)))
            yield
        finally:
            for h in handles:
                h.remove()
            setattr(cfg, ATTN_IMPLEMENTATION_ATTR, before)
            self._last.clear()

    def _hook(self, layer: int):
        def hook(module: Any, args: Any, output: Any) -> None:
            i = ATTN_WEIGHTS_OUTPUT_INDEX
            if isinstance(output, tuple) and len(output) > i and output[i] is not None:
                self._last[layer] = output[i].detach()

        return hook

    def after_chunk(self, view: Any, start: int, end: int) -> None:
        n = view.schedule.n_tokens
        wanted = [q for q in (self.queries if self.queries is not None else range(n)) if start <= q < end]
        if not wanted:
            return
        pos = view.cache.pos  # [batch, slots] after this forward
        for li in self.layers:
            w = self._last.get(li)
            if w is None:
                continue
            for q in wanted:
                row = w[:, :, q - start, :]  # [batch, heads, slots]
                for r, trace in enumerate(view.traces):
                    full = torch.zeros(1, row.shape[1], n, dtype=torch.float32)
                    alive = pos[r] >= 0
                    full[0, :, pos[r][alive]] = row[r][:, alive.to(row.device)].float().cpu()
                    self.sink.add_attention(AttnItem(trace.trace_id, view.variant, li, q, full))
        self._last.clear()


# ---------------------------------------------------------------------------------------------------------
# Run writing (parts, resume, merge)
# ---------------------------------------------------------------------------------------------------------
def trace_tables(
    trace: Trace,
    schedule: Any,
    tokens: MementoTokenIds,
    mode: str,
    source: str,
    bytes_per_token: int,
    tokenizer: Any = None,
    token_strings: Sequence[str] | None = None,
    trace_columns: dict[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """The four per-trace tables of the run contract (the one builder: generation, replay and ingestion).

    Args:
        token_strings: ``[n_tokens]`` display strings (default: the tokenizer's, else the ids).
        trace_columns: extra columns for the ``traces`` row (e.g. ``domain`` of ingested traces).
    """
    from .occupancy import schedule_occupancy

    roles = assign_roles(schedule, trace.token_ids, tokens)
    n = len(trace.token_ids)
    if token_strings is not None:
        names = list(token_strings)
    elif tokenizer is not None:
        names = tokenizer.convert_ids_to_tokens(list(trace.token_ids))
    else:
        names = [str(t) for t in trace.token_ids]
    tok = schema.TOKENS.frame(
        pd.DataFrame(
            {
                "trace": [trace.trace_id] * n,
                "pos": np.arange(n, dtype=np.int64),
                "token_id": np.asarray(trace.token_ids, dtype=np.int64),
                "token": [str(x) for x in names],
                "role": [str(r) for r in roles.role],
                "block": roles.block.astype(np.int64),
            }
        )
    )
    ev = schema.EVENTS.frame(
        [
            {
                "trace": trace.trace_id,
                "kind": e.kind.value,
                "position": e.position,
                "start": e.start,
                "end": e.end,
                "block": e.block if e.block is not None else -1,
                "rewind_to": e.rewind_to,
                "message": e.message,
            }
            for e in schedule.events
        ]
    )
    occ = schedule_occupancy(schedule)
    oc = schema.OCCUPANCY.frame(
        pd.DataFrame(
            {
                "trace": trace.trace_id,
                "mode": mode,
                "step": np.arange(n, dtype=np.int64),
                "tokens": occ,
                "bytes": occ * bytes_per_token,
            }
        )
    )
    tr = schema.TRACES.frame(
        [
            {
                "trace": trace.trace_id,
                "n_tokens": n,
                "prompt_len": trace.prompt_len,
                "n_blocks": len(schedule.blocks),
                "mode": mode,
                "source": source,
                **(trace_columns or {}),
            }
        ]
    )
    return {"traces": tr, "tokens": tok, "events": ev, "occupancy": oc}


class RunWriter:
    """Writes a run in parts so an interrupted run keeps its finished traces.

    Each part ``NNNNN`` writes its shards, then ``parts/NNNNN/{tokens,events,occupancy,kv_index,attn_index}``,
    and last ``parts/NNNNN/traces.parquet`` (the commit marker). :meth:`finish` merges the parts into the
    top-level tables of the contract and marks the run complete.
    """

    def __init__(self, store: RunStore):
        self.store = store

    def done_traces(self) -> set[str]:
        done: set[str] = set()
        for rel in self._parts("traces"):
            done |= set(self.store.read_table(rel)["trace"])
        return done

    def _parts(self, table: str) -> list[str]:
        marks = sorted(r for r in self.store.manifest.files if r.startswith("parts/") and r.endswith("/traces.parquet"))
        return [m.rsplit("/", 1)[0] + f"/{table}.parquet" for m in marks]

    def next_part(self) -> int:
        nums = [int(r.split("/")[1]) for r in self.store.manifest.files if r.startswith("parts/")]
        nums += [int(Path(r).stem.split("-")[1]) for r in self.store.manifest.files if "/shard-" in r]
        return max(nums, default=-1) + 1

    def write_part(self, tables: Sequence[dict[str, pd.DataFrame]], sink: CaptureSink | None) -> int:
        part = self.next_part()
        kv_idx, attn_idx = sink.write_part(self.store, part) if sink is not None else (None, None)
        base = f"parts/{part:05d}"
        for t in schema.PART_TABLES:  # traces last: the part's commit marker
            if t in (schema.KV_INDEX, schema.ATTN_INDEX):
                df = kv_idx if t is schema.KV_INDEX else attn_idx
                if df is None:
                    continue
            else:
                frames = [x[t.name] for x in tables if len(x[t.name])]
                df = pd.concat(frames, ignore_index=True) if frames else tables[0][t.name].iloc[:0]
            self.store.write_table(f"{base}/{t.part_path}", df)
        if sink is not None:
            sink.clear()
        return part

    def finish(self, **info: Any) -> None:
        for t in schema.PART_TABLES:
            frames = [self.store.read_table(r) for r in self._parts(t.part) if self.store.has(r)]
            frames = [f for f in frames if len(f)]
            if frames:
                self.store.write_table(t.path, pd.concat(frames, ignore_index=True))
        self.store.mark_complete(**info)


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
    writer = RunWriter(store)
    done = writer.done_traces()
    todo = [t for t in traces if t.trace_id not in done]
    sink = CaptureSink()
    for c in captures:
        c.sink = sink
    bpt = kv_bytes_per_token(model)
    for k in range(0, len(todo), part_traces):
        chunk = todo[k : k + part_traces]
        results = replay(
            model,
            chunk,
            config,
            tokens,
            batch_size=batch_size,
            captures=captures,
            progress=progress,
            allow_unclosed=allow_unclosed,
        )
        tables = [trace_tables(r.trace, r.schedule, tokens, config.mode, source, bpt, tokenizer) for r in results]
        writer.write_part(tables, sink if captures else None)
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
) -> RunStore:
    """Generate from prompts in batches and write each batch as a part (resumable); with ``captures`` the
    generated traces are replayed (teacher forcing rebuilds the identical cache) to capture K/V.

    Batch ``j`` samples with seed ``sampling.seed + j``, so a resumed run regenerates nothing it kept and
    produces what an uninterrupted run would have.
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
    store = RunStore.create(out, "generate", cfg, overwrite=overwrite, resume=resume)
    if store.complete:
        return store
    writer = RunWriter(store)
    done = writer.done_traces()
    sink = CaptureSink()
    for c in captures:
        c.sink = sink
    bpt = kv_bytes_per_token(model)
    for j, k in enumerate(range(0, len(prompts), batch_size)):
        ids = [f"gen-{i:05d}" for i in range(k, min(k + batch_size, len(prompts)))]
        if all(i in done for i in ids):
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
            progress=progress,
        )
        tables = [trace_tables(r.trace, r.schedule, tokens, config.mode, "generate", bpt, tokenizer) for r in results]
        if captures:
            replay(model, [r.trace for r in results], config, tokens, captures=captures, strict=False)
        writer.write_part(tables, sink if captures else None)
    writer.finish(n_traces=len(prompts))
    return store


def default_captures(
    layers: Sequence[int] | None = None,
    evicted_block: bool = False,
    attention_layers: Sequence[int] = (),
    attention_queries: Sequence[int] | None = None,
) -> list[Capture]:
    caps: list[Capture] = [MementoKV(layers=tuple(layers) if layers is not None else None)]
    if evicted_block:
        caps.append(EvictedBlockKV(layers=tuple(layers) if layers is not None else None))
    if attention_layers:
        caps.append(
            AttentionWeights(
                layers=tuple(attention_layers),
                queries=tuple(attention_queries) if attention_queries is not None else None,
            )
        )
    return caps


__all__ = [
    "Capture",
    "KVCapture",
    "MementoKV",
    "EvictedBlockKV",
    "AttentionWeights",
    "RunWriter",
    "replay_to_run",
    "generate_to_run",
    "trace_tables",
    "default_captures",
]
