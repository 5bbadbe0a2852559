"""Memento-style generation on any HF causal LM, with physical KV eviction: the generation loop.

The pieces live by concern: :mod:`.slot_cache` (``SlotCache``, the cache with a logical position per physical
slot), :mod:`.sampling` (``SamplingConfig``, ``sample_next``), :mod:`.occupancy` (``Occupancy``, what the cache
held after each step). This module is the loop that joins them; its names are re-exported here, so
``from memento_lens.runtime.generate import generate, SamplingConfig, SlotCache`` keeps working.

The schedule comes from :class:`~memento_lens.runtime.schedule.BlockTracker`, fed token by token: a token's
events are applied before that token is fed (an event at position p takes effect for the token at p), and
``tracker.must_end_block`` forces ``<|block_end|>`` instead of sampling.

Modes follow the config: vanilla (``keep_last_n_blocks=-1``), memento, restart (evict the block with its
delimiters, drop the memento's KV from ``<|summary_start|>`` on and feed the memento again, so its KV is
recomputed without the block).

Batches: each row has its own tracker and evictions. Rows whose chunks differ in length (a restart
re-feed, or prompts of different lengths) are right-padded; padding and evicted slots are masked with a 2D
attention mask and removed by compaction right after the step, so the cache never holds them for long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .config import BlockMaskingConfig, ConfigError, MementoTokenIds
from .occupancy import Occupancy, kv_bytes_per_token
from .sampling import SamplingConfig, sample_next
from .schedule import BlockTracker, EventKind, EvictionEvent, Schedule
from .slot_cache import DEAD, SlotCache, check_runtime_model
from .trace import Trace
from .traces.chat import chat_prompt


def _logits_dtype(logits: torch.Tensor) -> torch.dtype:
    """Kept logits: at least float32, float64 stays float64 (``verify`` compares float64 runs to ~1e-10)."""
    return torch.promote_types(logits.dtype, torch.float32)


@dataclass
class GenerationResult:
    """One generated sequence.

    Attributes:
        trace: prompt + generated ids.
        schedule: the events the tracker fired while generating (equal to ``compute_schedule`` of the trace).
        measured: occupancy measured from the physical cache after each step (equals the schedule's).
        stop: ``eos``, ``length`` or ``forced_end``.
        logits: ``[n_tokens, vocab]`` final logits per position (only with ``keep_logits``; rows before the
            prompt's last token are filled too).
    """

    trace: Trace
    schedule: Schedule
    measured: Occupancy
    stop: str
    logits: torch.Tensor | None = None


@dataclass
class _Row:
    index: int
    trace_id: str
    ids: list[int]
    prompt_len: int
    tracker: BlockTracker
    events: list[EvictionEvent] = field(default_factory=list)
    occ: list[int] = field(default_factory=list)
    stop: str = ""
    logits: torch.Tensor | None = None


def encode_prompts(tokenizer: Any, prompts: Sequence[str | Sequence[int]], chat: bool | None = None) -> list[list[int]]:
    """Token ids of each prompt: the chat template (with the generation prompt; :func:`runtime.traces.chat_prompt`)
    when the tokenizer has one, else the text with the tokenizer's special tokens (BOS)."""
    out = []
    for p in prompts:
        if not isinstance(p, str):
            out.append([int(t) for t in p])
            continue
        if tokenizer is None:
            raise ConfigError("string prompts need a tokenizer; pass token ids instead")
        text = chat_prompt(tokenizer, p) if chat is not False else None  # the one chat-template rule
        if chat and text is None:
            raise ConfigError("chat=True: the tokenizer has no chat template")
        if text is not None:
            out.append(tokenizer.encode(text, add_special_tokens=False))
        else:
            out.append(tokenizer.encode(p, add_special_tokens=True))
    for i, ids in enumerate(out):
        if not ids:
            raise ConfigError(f"prompt {i} is empty after tokenisation")
    return out


@torch.inference_mode()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    eos_token_id: int | None = None,
    forced: Sequence[Sequence[int]] | None = None,
    keep_logits: bool = False,
    device: str | torch.device | None = None,
    trace_ids: Sequence[str] | None = None,
    progress: bool = False,
) -> list[GenerationResult]:
    """Generate from a batch of prompts (token ids) with block masking and physical eviction.

    Args:
        model: HF causal LM (full-attention layers).
        prompts: token ids per prompt (see :func:`encode_prompts` for strings and chat templates).
        config: masking config (mode vanilla / memento / restart).
        tokens: memento token ids of the vocabulary.
        sampling: temperature / top-p / top-k / min-p / seed / max new tokens / stop on EOS.
        forced: teacher forcing through the same per-token loop: row i feeds ``forced[i]`` instead of sampling
            (used to check generation against the dense reference); ``max_new_tokens`` is ignored.
        keep_logits: keep the final logits of every position (small models only).
    """
    check_runtime_model(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
    n = len(prompts)
    if n == 0 or any(len(p) == 0 for p in prompts):
        raise ConfigError("generate needs at least one prompt, each with at least one token")
    ids_list = trace_ids or [f"gen-{i:05d}" for i in range(n)]
    rows: list[_Row] = []
    for i, p in enumerate(prompts):
        tr = BlockTracker(config, tokens, prompt_len=len(p))
        for t in p:
            tr.step(int(t))
        rows.append(_Row(i, ids_list[i], [int(t) for t in p], len(p), tr))
    cache = SlotCache(model, n)
    vocab = None

    # Prefill (right-padded), logits at each row's last prompt token.
    width = max(len(r.ids) for r in rows)
    inp = torch.zeros(n, width, dtype=torch.long)
    pos = torch.arange(width).repeat(n, 1)
    valid = torch.zeros(n, width, dtype=torch.bool)
    for r in rows:
        inp[r.index, : len(r.ids)] = torch.as_tensor(r.ids)
        valid[r.index, : len(r.ids)] = True
        r.occ.extend(range(1, len(r.ids) + 1))
    all_logits = cache.forward(inp.to(device), pos, valid, logits="all" if keep_logits else "last")
    if keep_logits:
        vocab = all_logits.shape[-1]
        for r in rows:
            r.logits = torch.full(
                (r.prompt_len + (len(forced[r.index]) if forced else sampling.max_new_tokens), vocab),
                float("nan"),
                dtype=_logits_dtype(all_logits),
            )
            r.logits[: r.prompt_len] = all_logits[r.index, : r.prompt_len].cpu()
        last = all_logits[torch.arange(n), valid.sum(1) - 1]
    else:
        last = all_logits
    cache.compact()
    active = list(range(n))  # row index per batch slot
    steps = max(len(f) for f in forced) if forced else sampling.max_new_tokens
    bar = _bar(progress, steps, "generate", "step")
    for step in range(steps):
        if not active:
            break
        sampled = sample_next(last, sampling, gen).tolist() if not forced else None
        chunks: list[tuple[list[int], list[int]]] = []
        leaving: list[int] = []
        for b, ri in enumerate(active):
            r = rows[ri]
            if forced:
                if step >= len(forced[ri]):
                    r.stop = r.stop or "forced_end"
                    leaving.append(b)
                    chunks.append(([], []))
                    continue
                tok = int(forced[ri][step])
            elif r.tracker.must_end_block:
                tok = tokens.block_end
            else:
                tok = int(sampled[b])
            p = len(r.ids)
            r.ids.append(tok)
            evs = r.tracker.step(tok)
            r.events.extend(evs)
            rewind = p
            for ev in evs:
                if ev.end > ev.start:
                    cache.drop_range(ev.start, ev.end, rows=[b])
                if ev.rewind_to is not None:
                    rewind = min(rewind, ev.rewind_to)
            if rewind < p:
                cache.drop_range(rewind, p, rows=[b])
            done_eos = not forced and sampling.stop_on_eos and eos_token_id is not None and tok == eos_token_id
            done_len = not forced and len(r.ids) - r.prompt_len >= sampling.max_new_tokens
            if done_eos or done_len:
                r.stop = "eos" if done_eos else "length"
                leaving.append(b)
                chunks.append(([], []))
                alive_after = cache.held()[b] + 1
                r.occ.append(alive_after)
                continue
            chunks.append((r.ids[rewind : p + 1], list(range(rewind, p + 1))))
        staying = [b for b in range(len(active)) if b not in set(leaving)]
        if leaving:
            cache.select_rows(staying)
            chunks = [chunks[b] for b in staying]
            active = [active[b] for b in staying]
        if not active:
            bar.update(1)
            break
        width = max(len(c[0]) for c in chunks)
        if width == 1:  # the common decode step: one token per row
            inp = torch.tensor([c[0] for c in chunks], dtype=torch.long)
            pos = torch.tensor([c[1] for c in chunks], dtype=torch.long)
            valid = None
        else:
            inp = torch.zeros(len(active), width, dtype=torch.long)
            pos = torch.zeros(len(active), width, dtype=torch.long)
            valid = torch.zeros(len(active), width, dtype=torch.bool)
            for b, (toks, ps) in enumerate(chunks):
                inp[b, : len(toks)] = torch.as_tensor(toks)
                pos[b, : len(ps)] = torch.as_tensor(ps)
                pos[b, len(ps) :] = ps[-1]
                valid[b, : len(toks)] = True
        cache.compact()
        want_all = keep_logits or width > 1
        out = cache.forward(inp.to(device), pos, valid, logits="all" if want_all else "last")
        if want_all:
            lens = valid.sum(1) if valid is not None else torch.ones(len(active), dtype=torch.long)
            last = out[torch.arange(len(active), device=out.device), (lens - 1).to(out.device)]
            if keep_logits:
                for b, ri in enumerate(active):
                    toks, ps = chunks[b]
                    rows[ri].logits[ps[0] : ps[-1] + 1] = out[b, : len(ps)].cpu()
        else:
            last = out
        cache.compact()
        alive = cache.held()
        for b, ri in enumerate(active):
            rows[ri].occ.append(int(alive[b]))
        bar.update(1)
    bar.close()
    bpt = kv_bytes_per_token(model)
    results = []
    for r in rows:
        r.stop = r.stop or ("forced_end" if forced else "length")
        r.events.extend(r.tracker.finish())
        trace = Trace(r.trace_id, r.ids, r.prompt_len, meta={"stop": r.stop, "mode": config.mode})
        sched = Schedule(tuple(r.events), tuple(r.tracker.blocks), r.tracker.n_seen, r.prompt_len, r.tracker.config)
        lg = r.logits[: len(r.ids)] if r.logits is not None else None
        results.append(
            GenerationResult(
                trace,
                sched,
                Occupancy(np.asarray(r.occ, dtype=np.int64), bpt, r.prompt_len, r.trace_id, config.mode),
                r.stop,
                lg,
            )
        )
    return results


def _bar(progress: Any, total: int, desc: str, unit: str = "tok") -> Any:
    """See :func:`memento_lens.runtime.progress.bar_for` (``progress``: bool or a caller's job bar)."""
    from .progress import bar_for

    return bar_for(progress, total, desc, unit)


__all__ = [
    "SlotCache",
    "SamplingConfig",
    "GenerationResult",
    "Occupancy",
    "check_runtime_model",
    "generate",
    "encode_prompts",
    "sample_next",
    "EventKind",
    "DEAD",
]
