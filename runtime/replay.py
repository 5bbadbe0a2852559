"""Teacher-forced replay of given token sequences with the schedule, segment by segment.

Between two eviction events nothing is evicted, so a whole segment is fed in one forward (chunked to
``max_chunk`` tokens); at an event the range is physically removed from the cache, and for restart events the
memento's KV from ``rewind_to`` on is dropped and fed again. The cache after every segment therefore holds
exactly what :func:`~memento_lens.runtime.generate.generate` would have built token by token (the runtime
tests check both against :func:`~memento_lens.runtime.dense.dense_forward`).

Batches: sequences with the same structure (same length, prompt length and eviction events) share one
batched cache with identical slicing; :func:`replay` groups any list of traces that way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .config import BlockMaskingConfig, ConfigError, MementoTokenIds
from .generate import _bar
from .occupancy import Occupancy, kv_bytes_per_token, schedule_occupancy
from .schedule import EvictionEvent, Schedule, compute_schedule
from .slot_cache import SlotCache, check_runtime_model
from .trace import Trace

if TYPE_CHECKING:
    from .capture import Capture

DEFAULT_MAX_CHUNK = 1024


class ReplayError(ConfigError):
    """A trace cannot be replayed; the message names the trace and the token index."""


@dataclass
class ReplayView:
    """What captures see during a replay batch (all rows share one structure).

    Attributes:
        model: the HF model.
        cache: the batched :class:`SlotCache` (slots ``[batch, slots]``).
        traces, schedules: one per row.
        input_ids: ``[batch, n_tokens]`` (CPU).
        config: the masking config applied.
        rewound: restart mode: the ``rewind_to`` positions whose memento has been dropped and is being fed again.
    """

    model: Any
    cache: SlotCache
    traces: list[Trace]
    schedules: list[Schedule]
    input_ids: torch.Tensor
    config: BlockMaskingConfig
    rewound: set[int] = field(default_factory=set)  # rewind_to positions applied so far (restart mode)

    @property
    def schedule(self) -> Schedule:
        """The shared structure (row 0's schedule)."""
        return self.schedules[0]

    @property
    def variant(self) -> str:
        """How this run computes mementos: ``restart`` in restart mode, else ``normal``."""
        return "restart" if self.config.restart_mode and self.config.evicts else "normal"

    def recompute(
        self, keep: torch.Tensor, start: int, end: int, layers: Sequence[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K/V of tokens ``[start, end)`` fed again on a copy of the cache holding only ``keep`` slots.

        Returns per selected layer ``([batch, kv_heads, end-start, d], ...)``; the live cache is untouched.
        """
        sub = self.cache.subset(keep)
        n = end - start
        dev = next(self.model.parameters()).device
        pos = torch.arange(start, end).repeat(self.cache.batch, 1)
        sub.forward(self.input_ids[:, start:end].to(dev), pos, logits="none")
        kv = sub.layers_kv()
        return [(kv[li][0][:, :, -n:], kv[li][1][:, :, -n:]) for li in (range(len(kv)) if layers is None else layers)]


@dataclass
class ReplayResult:
    """One replayed trace.

    Attributes:
        logits: ``[n_tokens, vocab]`` final logits (restart: the recomputed ones), only with ``keep_logits``.
        occupancy: the schedule's per-step occupancy (checked against the physical cache at segment ends).
        peak_bytes: the largest K+V bytes the physical cache of its batch held, divided by the batch size.
    """

    trace: Trace
    schedule: Schedule
    occupancy: Occupancy
    peak_bytes: int
    logits: torch.Tensor | None = None


UNCLOSED = "was never closed"  # the tracker's end-of-stream warning (a generation cut by its length limit)


def validate(trace: Trace, schedule: Schedule, vocab_size: int | None = None, allow_unclosed: bool = False) -> None:
    """Raise :class:`ReplayError` naming the trace and token index for malformed input.

    Args:
        allow_unclosed: accept a block still open at the end (a truncated generation); other warnings still raise.
    """
    ids = np.asarray(trace.token_ids, dtype=np.int64)
    if len(ids) == 0:
        raise ReplayError(f"trace {trace.trace_id!r}: no tokens")
    if vocab_size is not None:
        bad = np.nonzero((ids < 0) | (ids >= vocab_size))[0]
        if len(bad):
            i = int(bad[0])
            raise ReplayError(
                f"trace {trace.trace_id!r}: token {i} has id {int(ids[i])} outside the model's "
                f"vocabulary [0, {vocab_size})"
            )
    warnings = [w for w in schedule.warnings if not (allow_unclosed and UNCLOSED in (w.message or ""))]
    if warnings:
        w = warnings[0]
        raise ReplayError(f"trace {trace.trace_id!r}: malformed block structure at token {w.position}: {w.message}")


def validate_all(
    model: Any,
    traces: Sequence[Trace],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    allow_unclosed: bool = False,
) -> list[Schedule]:
    """Schedules of all traces, raising :class:`ReplayError` for the first malformed one (before any work)."""
    vocab = getattr(model.config, "vocab_size", None)
    out = []
    for t in traces:
        s = compute_schedule(t.token_ids, config, tokens, prompt_len=t.prompt_len)
        validate(t, s, vocab, allow_unclosed)
        out.append(s)
    if config.evicts and out and not any(s.blocks for s in out):
        # nothing to evict: the run would equal vanilla while its manifest says memento/restart
        raise ReplayError(
            f"trace {traces[0].trace_id!r} (and every other of the {len(traces)}): no memento blocks "
            f"(no <|block_start|> id {tokens.block_start} after the prompt); use --mode vanilla, or check that "
            "the traces were tokenized for this model"
        )
    return out


def structure_key(schedule: Schedule) -> tuple:
    """Traces with equal keys replay in one batch (identical slicing)."""
    return (
        schedule.n_tokens,
        schedule.prompt_len,
        tuple((e.position, e.start, e.end, e.rewind_to) for e in schedule.evictions),
    )


def replay(
    model: Any,
    traces: Sequence[Trace],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    *,
    batch_size: int = 64,
    captures: Sequence["Capture"] = (),
    keep_logits: bool = False,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    strict: bool = True,
    allow_unclosed: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> list[ReplayResult]:
    """Replay many traces; same-structure traces are batched. Results come back in input order.

    Args:
        strict: malformed traces (schedule warnings, ids outside the vocabulary) raise :class:`ReplayError`.
        allow_unclosed: with ``strict``, still accept a block left open at the end (truncated generations).
    """
    from .validate import check_int

    check_int(batch_size, "batch_size", min=1)
    check_runtime_model(model)
    vocab = getattr(model.config, "vocab_size", None)
    schedules = []
    for t in traces:
        s = compute_schedule(t.token_ids, config, tokens, prompt_len=t.prompt_len)
        if strict:
            validate(t, s, vocab, allow_unclosed)
        schedules.append(s)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(schedules):
        groups.setdefault(structure_key(s), []).append(i)
    results: list[ReplayResult | None] = [None] * len(traces)
    bar = _bar(progress, sum(len(t) for t in traces), "replay")
    with contextlib.ExitStack() as stack:
        for c in captures:
            stack.enter_context(c.attach(model))
        for members in groups.values():
            for k in range(0, len(members), batch_size):
                idx = members[k : k + batch_size]
                out = replay_batch(
                    model,
                    [traces[i] for i in idx],
                    [schedules[i] for i in idx],
                    config,
                    captures=captures,
                    keep_logits=keep_logits,
                    max_chunk=max_chunk,
                    device=device,
                    on_tokens=bar.update,
                )
                for i, r in zip(idx, out):
                    results[i] = r
    bar.close()
    return [r for r in results if r is not None]


@torch.inference_mode()
def replay_batch(
    model: Any,
    traces: Sequence[Trace],
    schedules: Sequence[Schedule],
    config: BlockMaskingConfig,
    *,
    captures: Sequence["Capture"] = (),
    keep_logits: bool = False,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    device: str | torch.device | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> list[ReplayResult]:
    """Replay traces of one structure (see :func:`structure_key`) in a single batched cache.

    ``on_tokens(n)`` is called after every chunk with the tokens newly covered (batch x positions; a restart's
    recomputation counts once), so a progress bar advances inside long traces."""
    keys = {structure_key(s) for s in schedules}
    if len(keys) != 1:
        raise ValueError("replay_batch needs traces of one structure; use replay() to group them")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    captures = sorted(captures, key=lambda c: c.order)
    b = len(traces)
    sched = schedules[0]
    n = sched.n_tokens
    ids = torch.as_tensor(np.asarray([t.token_ids for t in traces], dtype=np.int64))
    cache = SlotCache(model, b)
    view = ReplayView(model, cache, list(traces), list(schedules), ids, config)
    occ = schedule_occupancy(sched)
    logits = None

    by_pos: dict[int, list[EvictionEvent]] = {}
    for ev in sched.evictions:
        by_pos.setdefault(ev.position, []).append(ev)

    high = 0  # furthest position fed so far (progress counts each position once)

    def feed(a: int, z: int) -> None:
        nonlocal logits, high
        for s in range(a, z, max_chunk):
            e = min(z, s + max_chunk)
            pos = torch.arange(s, e).repeat(b, 1)
            out = cache.forward(ids[:, s:e].to(device), pos, logits="all" if keep_logits else "none")
            if keep_logits:
                if logits is None:
                    # at least float32; float64 stays float64 (verify's float64 reference run)
                    logits = torch.zeros(b, n, out.shape[-1], dtype=torch.promote_types(out.dtype, torch.float32))
                logits[:, s:e] = out.cpu()
            for c in captures:
                c.after_chunk(view, s, e)
            if on_tokens is not None and e > high:
                on_tokens((e - high) * b)
                high = e
        if z > a:
            _check_occupancy(cache, occ, z - 1, traces[0].trace_id)

    cur = 0
    for p in sorted(by_pos):
        feed(cur, p)
        evs = by_pos[p]
        for c in captures:
            c.before_evict(view, p, evs)
        rewind = p
        for ev in evs:
            cache.drop_range(ev.start, ev.end)
            if ev.rewind_to is not None:
                rewind = min(rewind, ev.rewind_to)
        if rewind < p:
            cache.drop_range(rewind, p)
            view.rewound.add(rewind)
        cache.compact()
        cur = rewind
    feed(cur, n)
    bpt = kv_bytes_per_token(model)
    peak = cache.peak_bytes // max(b, 1)
    return [
        ReplayResult(
            t,
            s,
            Occupancy(occ, bpt, t.prompt_len, t.trace_id, config.mode),
            peak,
            logits[i] if logits is not None else None,
        )
        for i, (t, s) in enumerate(zip(traces, schedules))
    ]


def _check_occupancy(cache: SlotCache, occ: np.ndarray, step: int, trace_id: str) -> None:
    held = int((cache.pos[0] >= 0).sum())
    if held != int(occ[step]) or cache.n_slots != held:
        raise AssertionError(
            f"trace {trace_id!r}: cache holds {held} tokens ({cache.n_slots} slots) after step "
            f"{step}, schedule counts {int(occ[step])}"
        )


def traces_from_ids(rows: Iterable[Sequence[int]], prompt_len: int, prefix: str = "trace") -> list[Trace]:
    """Wrap token id rows (e.g. ``toy.task.sample(...).token_ids``) as traces."""
    return [Trace(f"{prefix}-{i:05d}", [int(t) for t in r], prompt_len) for i, r in enumerate(rows)]


__all__ = [
    "replay",
    "replay_batch",
    "ReplayView",
    "ReplayResult",
    "ReplayError",
    "validate",
    "validate_all",
    "structure_key",
    "traces_from_ids",
]
