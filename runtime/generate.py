"""Memento-style generation on any HF causal LM, with physical KV eviction.

The cache is a ``DynamicCache`` wrapped in :class:`SlotCache`, which remembers the logical position of every
physical slot. Evicting a block removes its slots from every layer (the tensors are sliced, so the memory is
really freed) and later tokens are fed with explicit logical ``position_ids``, so RoPE sees the positions the
model was trained with. The schedule comes from :class:`~memento_lens.runtime.schedule.BlockTracker`, fed
token by token: a token's events are applied before that token is fed (an event at position p takes effect
for the token at p), and ``tracker.must_end_block`` forces ``<|block_end|>`` instead of sampling.

Modes follow the config: vanilla (``keep_last_n_blocks=-1``), memento, restart (evict the block with its
delimiters, drop the memento's KV from ``<|summary_start|>`` on and feed the memento again, so its KV is
recomputed without the block).

Batches: each row has its own tracker and evictions. Rows whose chunks differ in length (a restart
re-feed, or prompts of different lengths) are right-padded; padding and evicted slots are masked with a 2D
attention mask and removed by compaction right after the step, so the cache never holds them for long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .config import BlockMaskingConfig, ConfigError, MementoTokenIds
from .hf_paths import (
    CACHE_DATA_KWARG,
    CACHE_INPUT_KWARG,
    CACHE_KEYS_ATTR,
    CACHE_VALUES_ATTR,
    FULL_ATTENTION,
    LAYER_TYPES_ATTR,
    LOGITS_TO_KEEP_KWARG,
    cache_layers,
)
from .masks import occupancy as schedule_occupancy
from .schedule import BlockTracker, EventKind, EvictionEvent, Schedule
from .trace import Trace

DEAD = -1  # logical position of a physical slot that holds nothing (evicted, padding)


# ---------------------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheOccupancy:
    """KV cache occupancy of one sequence, per step.

    Attributes:
        tokens: ``[n_tokens]`` int, tokens held in the cache right after the token at each position is processed.
        bytes_per_token: 2 x layers x kv_heads x head_dim x dtype bytes.
    """

    tokens: np.ndarray
    bytes_per_token: int

    @property
    def bytes(self) -> np.ndarray:
        return self.tokens.astype(np.int64) * self.bytes_per_token

    @property
    def peak_tokens(self) -> int:
        return int(self.tokens.max(initial=0))

    @property
    def peak_bytes(self) -> int:
        return self.peak_tokens * self.bytes_per_token

    def auc_bytes(self, from_step: int = 0) -> int:
        """Area under the occupancy curve (bytes x steps) from ``from_step`` on (the paper's AUC)."""
        return int(self.bytes[from_step:].sum())

    @classmethod
    def from_schedule(cls, schedule: Schedule, bytes_per_token: int) -> "CacheOccupancy":
        return cls(schedule_occupancy(schedule), bytes_per_token)

    def to_rows(self, trace: str, mode: str) -> dict[str, Any]:
        n = len(self.tokens)
        return {
            "trace": [trace] * n,
            "mode": [mode] * n,
            "step": np.arange(n, dtype=np.int64),
            "tokens": self.tokens.astype(np.int64),
            "bytes": self.bytes,
        }


def check_runtime_model(model: Any) -> None:
    """Physical slicing needs plain full-attention layers (no sliding-window ring buffers)."""
    types = getattr(model.config, LAYER_TYPES_ATTR, None)
    if types and any(t != FULL_ATTENTION for t in types):
        raise ConfigError(
            f"model has non-full-attention layers ({sorted(set(types))}); the memento runtime "
            "supports full-attention decoders only"
        )


# ---------------------------------------------------------------------------------------------------------
# The cache with logical positions per physical slot
# ---------------------------------------------------------------------------------------------------------
class SlotCache:
    """A batched ``DynamicCache`` plus the logical position of each physical slot.

    Attributes:
        cache: the HF cache; per layer ``[batch, kv_heads, slots, d_head]``.
        pos: ``[batch, slots]`` int64 (CPU), logical position per slot, :data:`DEAD` for masked slots.
        peak_bytes: the largest K+V byte count the cache held after any forward.
    """

    def __init__(self, model: Any, batch: int, cache: Any = None, pos: torch.Tensor | None = None):
        from transformers import DynamicCache

        self.model = model
        self.cache = cache if cache is not None else DynamicCache(config=model.config)
        self.pos = pos if pos is not None else torch.empty(batch, 0, dtype=torch.long)
        self.peak_bytes = 0
        self._dirty = bool((self.pos < 0).any())  # any dead slot (evicted or padding) not yet compacted

    # -- size --------------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    @property
    def n_slots(self) -> int:
        return self.pos.shape[1]

    def alive(self) -> torch.Tensor:
        return self.pos >= 0

    def held(self) -> list[int]:
        """Tokens held per row (slots that are not dead)."""
        if not self._dirty:
            return [self.n_slots] * self.batch
        return (self.pos >= 0).sum(1).tolist()

    def layers_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for layer in cache_layers(self.cache):
            k = getattr(layer, CACHE_KEYS_ATTR, None)
            if k is None or k.numel() == 0:
                continue
            out.append((k, getattr(layer, CACHE_VALUES_ATTR)))
        return out

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers_kv())

    # -- forward -------------------------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None = None, logits: str = "last"
    ) -> torch.Tensor | None:
        """Feed ``input_ids`` ``[batch, q]`` at logical ``positions`` ``[batch, q]``; append their KV.

        Args:
            valid: ``[batch, q]`` bool, False for right padding (its slots are dead).
            logits: ``all`` -> ``[batch, q, vocab]``; ``last`` -> ``[batch, vocab]`` at each row's last valid
                token; ``none`` -> None.
        """
        b, q = input_ids.shape
        device = input_ids.device
        padded = valid is not None and not bool(valid.all())
        holes = padded or self._dirty
        mask = None
        if holes:
            v = valid if valid is not None else torch.ones(b, q, dtype=torch.bool)
            mask = torch.cat([self.pos >= 0, v.cpu()], dim=1).to(device=device, dtype=torch.long)
        keep = 0 if (logits == "all" or (logits == "last" and padded)) else 1
        out = self.model(
            input_ids=input_ids,
            position_ids=positions.to(device),
            attention_mask=mask,
            use_cache=True,
            **{CACHE_INPUT_KWARG: self.cache, LOGITS_TO_KEEP_KWARG: keep},
        )
        new_pos = positions.detach().to("cpu", torch.long).clone()
        if padded:
            new_pos[~valid.cpu()] = DEAD
            self._dirty = True
        self.pos = torch.cat([self.pos, new_pos], dim=1)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())
        if logits == "none":
            return None
        if logits == "all":
            return out.logits
        if not padded:
            return out.logits[:, -1]
        last = valid.long().sum(1).to(out.logits.device) - 1
        return out.logits[torch.arange(b, device=out.logits.device), last]

    # -- eviction -----------------------------------------------------------------------------------------
    def drop_range(self, start: int, end: int, rows: torch.Tensor | Sequence[int] | None = None) -> int:
        """Mark slots whose logical position lies in ``[start, end)`` dead (all rows, or ``rows``)."""
        hit = (self.pos >= start) & (self.pos < end)
        if rows is not None:
            sel = torch.zeros(self.batch, 1, dtype=torch.bool)
            sel[torch.as_tensor(list(rows), dtype=torch.long)] = True
            hit &= sel
        n = int(hit.sum())
        if n:
            self.pos[hit] = DEAD
            self._dirty = True
        return n

    def compact(self) -> None:
        """Physically remove dead slots from every layer (rows keep their own slot order)."""
        if not self._dirty:
            return
        self._dirty = False
        alive = self.pos >= 0
        if bool(alive.all()):
            return
        counts = alive.sum(1)
        width = int(counts.max()) if self.batch else 0
        if self.batch == 1:
            idx = alive[0].nonzero().squeeze(1)
            self._reindex(lambda t: t.index_select(2, idx.to(t.device)))
            self.pos = self.pos[:, idx]
            return
        idx = torch.zeros(self.batch, width, dtype=torch.long)
        new_pos = torch.full((self.batch, width), DEAD, dtype=torch.long)
        for r in range(self.batch):
            keep = alive[r].nonzero().squeeze(1)
            idx[r, : len(keep)] = keep
            new_pos[r, : len(keep)] = self.pos[r, keep]

        def gather(t: torch.Tensor) -> torch.Tensor:
            i = idx.to(t.device)[:, None, :, None].expand(t.shape[0], t.shape[1], width, t.shape[3])
            return t.gather(2, i)

        self._reindex(gather)
        self.pos = new_pos
        self._dirty = bool((new_pos < 0).any())  # rows shorter than the widest keep padding slots

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` of the batch (finished sequences leave)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        self._reindex(lambda t: t.index_select(0, idx.to(t.device)))
        self.pos = self.pos[idx]

    def _reindex(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for layer in cache_layers(self.cache):
            k = getattr(layer, CACHE_KEYS_ATTR, None)
            if k is None or k.numel() == 0:
                continue
            setattr(layer, CACHE_KEYS_ATTR, fn(k))
            setattr(layer, CACHE_VALUES_ATTR, fn(getattr(layer, CACHE_VALUES_ATTR)))

    # -- reading ----------------------------------------------------------------------------------------------
    def slots_of(self, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``[batch, n]`` physical slot of each logical position (raises if one is not cached)."""
        want = torch.as_tensor(positions, dtype=torch.long).view(1, 1, -1)
        hit = self.pos.unsqueeze(2) == want  # [b, slots, n]
        found = hit.any(1)
        if not bool(found.all()):
            missing = want.view(-1)[~found.all(0)].tolist()
            raise KeyError(f"positions {missing[:8]} are not in the cache")
        return hit.float().argmax(1)

    def gather(
        self, positions: Sequence[int] | torch.Tensor, layers: Sequence[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K/V at logical ``positions``: per selected layer ``([b, kv_heads, n, d], [b, kv_heads, n, d])`` copies."""
        slots = self.slots_of(positions)
        out = []
        kv = self.layers_kv()
        for li in range(len(kv)) if layers is None else layers:
            k, v = kv[li]
            i = slots.to(k.device)[:, None, :, None].expand(k.shape[0], k.shape[1], slots.shape[1], k.shape[3])
            out.append((k.gather(2, i), v.gather(2, i)))
        return out

    def subset(self, keep: torch.Tensor) -> "SlotCache":
        """A compacted copy holding only slots where ``keep`` ``[batch, slots]`` is True (for counterfactuals)."""
        from transformers import DynamicCache

        pos = torch.where(keep, self.pos, torch.full_like(self.pos, DEAD))
        tmp = SlotCache(self.model, self.batch, cache=self.cache, pos=pos)
        data: list[tuple[torch.Tensor, torch.Tensor]] = []
        saved = [(getattr(l, CACHE_KEYS_ATTR), getattr(l, CACHE_VALUES_ATTR)) for l in cache_layers(self.cache)]
        try:
            tmp.compact()  # rebinds layer tensors to gathered copies ...
            data = [(k, v) for k, v in tmp.layers_kv()]
        finally:  # ... so put the originals back
            for layer, (k, v) in zip(cache_layers(self.cache), saved):
                setattr(layer, CACHE_KEYS_ATTR, k)
                setattr(layer, CACHE_VALUES_ATTR, v)
        new = DynamicCache(**{CACHE_DATA_KWARG: data}) if data else DynamicCache(config=self.model.config)
        return SlotCache(self.model, self.batch, cache=new, pos=tmp.pos)


# ---------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature=0`` is greedy; top_k 0 / top_p 1 / min_p 0 are off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    seed: int = 0
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0 or not 0 <= self.min_p < 1 or self.max_new_tokens < 0:
            raise ConfigError("top_k >= 0, 0 <= min_p < 1 and max_new_tokens >= 0 are required")


def _logits_dtype(logits: torch.Tensor) -> torch.dtype:
    """Kept logits: at least float32, float64 stays float64 (``verify`` compares float64 runs to ~1e-10)."""
    return torch.promote_types(logits.dtype, torch.float32)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """``[batch, vocab]`` logits -> ``[batch]`` token ids under temperature / top-k / top-p / min-p."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < scores.shape[-1]:
        kth = scores.topk(cfg.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = scores.softmax(-1)
    if cfg.min_p > 0:
        floor = probs.max(-1, keepdim=True).values * cfg.min_p
        probs = probs.masked_fill(probs < floor, 0.0)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p
        sorted_p = sorted_p.masked_fill(before >= cfg.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs / probs.sum(-1, keepdim=True)
    return (
        torch.multinomial(
            probs.cpu() if generator is not None and generator.device.type == "cpu" else probs, 1, generator=generator
        )
        .view(-1)
        .to(logits.device)
    )


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------
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
    measured: CacheOccupancy
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
    """Token ids of each prompt: the chat template (with the generation prompt) when the tokenizer has one."""
    out = []
    for p in prompts:
        if not isinstance(p, str):
            out.append([int(t) for t in p])
            continue
        if tokenizer is None:
            raise ConfigError("string prompts need a tokenizer; pass token ids instead")
        use_chat = getattr(tokenizer, "chat_template", None) is not None if chat is None else chat
        if use_chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
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
    bar = _bar(progress, steps, "generate")
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
    from .model import kv_bytes_per_token

    bpt = kv_bytes_per_token(model)
    results = []
    for r in rows:
        r.stop = r.stop or ("forced_end" if forced else "length")
        r.events.extend(r.tracker.finish())
        trace = Trace(r.trace_id, r.ids, r.prompt_len, meta={"stop": r.stop, "mode": config.mode})
        sched = Schedule(tuple(r.events), tuple(r.tracker.blocks), r.tracker.n_seen, r.prompt_len, r.tracker.config)
        lg = r.logits[: len(r.ids)] if r.logits is not None else None
        results.append(
            GenerationResult(trace, sched, CacheOccupancy(np.asarray(r.occ, dtype=np.int64), bpt), r.stop, lg)
        )
    return results


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", leave=False)


__all__ = [
    "SlotCache",
    "SamplingConfig",
    "GenerationResult",
    "CacheOccupancy",
    "generate",
    "encode_prompts",
    "sample_next",
    "EventKind",
    "DEAD",
]
