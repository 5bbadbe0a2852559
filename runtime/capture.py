"""Captures during replay, and writing runs to a run directory.

Writing runs lives in :mod:`.rundir` (the format) and :mod:`.runs` (``replay_to_run``, ``generate_to_run``);
this module only captures, so it imports neither the replay nor the generator.

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
from typing import Any, Iterator, Sequence

import torch

from .hf_paths import ATTN_IMPLEMENTATION_ATTR, ATTN_WEIGHTS_OUTPUT_INDEX, SELF_ATTN_ATTR, decoder_layers
from .rundir.kv import AttnItem, CaptureSink, KVItem, KVKey
from .schedule import EvictionEvent


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
    "default_captures",
]
