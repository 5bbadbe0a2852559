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

from .hf_paths import ATTN_IMPLEMENTATION_ATTR, ATTN_WEIGHTS_OUTPUT_INDEX, decoder_layers, self_attn_attr
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
    layers_option = "--layers"  # the CLI option that sets ``layers`` (named when a layer does not exist)

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        yield

    def before_evict(self, view: Any, position: int, events: Sequence[EvictionEvent]) -> None:
        """Called before the events at ``position`` remove their ranges from the cache."""

    def after_chunk(self, view: Any, start: int, end: int) -> None:
        """Called after tokens ``[start, end)`` were fed (before any compaction)."""

    def check_length(self, longest: int) -> None:
        """Refuse, before any work, a request no trace of up to ``longest`` tokens can satisfy (default: none)."""

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


# Storage precision of captured attention: float16 keeps 11 significant bits, so each stored weight w is
# within 2**-11 * w of the float32 value (a row's sum within 5e-4 of 1) and weights below 6e-8 read as 0.
ATTENTION_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}
ATTENTION_KEYS = ("visible", "all")
ATTENTION_REL_PRECISION = 2.0**-11


def attention_bytes(heads: int, keys: int, dtype: str = "float16") -> int:
    """Bytes one captured query of one layer costs: ``heads x keys x dtype size`` (plus ~60 B of index).

    ``keys`` is how many positions the query sees (``keys="visible"``) or the trace length (``"all"``).
    All queries of a trace of n tokens with every position visible: ``heads * n * (n + 1) / 2 * 2`` bytes
    in float16 (1 MB per head per layer for 1K tokens); evictions shrink it to the cache's occupancy.
    """
    return int(heads) * int(keys) * ATTENTION_DTYPES[dtype].itemsize


def expand_attention(weights: Any, visible: Any) -> Any:
    """A stored attention tensor as ``[heads, n_tokens]`` float32 over every position (0 where not stored).

    Args:
        weights: the stored tensor, ``[1, heads, L]`` (or ``[heads, L]``): either over every position
            (``L == n_tokens``: ``keys="all"`` and runs written before compact storage, float32) or over the
            positions visible to the query, in position order (``L == visible.sum()``, ``keys="visible"``).
        visible: ``[n_tokens]`` bool, the query's visible positions by the runtime's one rule
            (:func:`memento_lens.runtime.masks.visible_at`).

    Returns:
        ``numpy.ndarray [heads, n_tokens]`` float32.

    Raises:
        ValueError: when ``L`` fits neither layout (the caller names the file and tensor).
    """
    import numpy as np

    vis = np.asarray(visible, dtype=bool)
    w = torch.as_tensor(weights).detach().cpu()
    if w.dtype not in (torch.float16, torch.float32):  # numpy has no bfloat16
        w = w.float()
    w = w.reshape(-1, w.shape[-1]).numpy()
    n = len(vis)
    if w.shape[-1] == n:
        return w.astype(np.float32)
    where = np.flatnonzero(vis)
    if w.shape[-1] == len(where):
        out = np.zeros((w.shape[0], n), dtype=np.float32)
        out[:, where] = w
        return out
    n_vis = len(where)
    raise ValueError(
        f"holds {w.shape[-1]} keys; expected {n} (every position) or {n_vis} (the positions visible to the query)"
    )


@dataclass
class AttentionWeights(Capture):
    """Attention weights of chosen queries in chosen layers, stored compactly.

    Each captured query of each layer is one tensor ``[1, heads, n_keys]`` (decode it with
    :func:`expand_attention`): with ``keys="visible"`` (default) ``n_keys`` is the number of positions the
    query sees by the runtime's one visibility rule, in position order (the rest are 0 by construction, so
    nothing is lost); ``keys="all"`` keeps every position of the trace (evicted and future = 0). Should a row
    put weight on a position the rule hides (a masking leak), that row is stored over every position so the
    leak stays visible. Cost: :func:`attention_bytes`.

    Attributes:
        layers: which layers (at least one).
        queries: query positions (None = every position).
        dtype: ``float16`` (default; relative precision 2**-11, see ``ATTENTION_REL_PRECISION``) or ``float32``.
        keys: ``visible`` (default) or ``all``.
    """

    layers: tuple[int, ...] = (0,)
    queries: tuple[int, ...] | None = None
    dtype: str = "float16"
    layers_option = "--attention-layers"
    keys: str = "visible"
    order = -1
    _last: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .errors import OptionError

        self.layers = tuple(int(x) for x in self.layers)
        if not self.layers:
            raise OptionError("--attention-layers: give at least one layer to capture attention weights of")
        if any(x < 0 for x in self.layers):
            raise OptionError(f"--attention-layers: layer {min(self.layers)} is negative")
        if self.queries is not None:
            self.queries = tuple(int(q) for q in self.queries)
            if not self.queries:
                raise OptionError("--attention-queries: empty list (leave it out to capture every query)")
            if min(self.queries) < 0:
                raise OptionError(f"--attention-queries: position {min(self.queries)} is negative")
        if self.dtype not in ATTENTION_DTYPES:
            raise OptionError(f"attention dtype {self.dtype!r}: expected one of {', '.join(ATTENTION_DTYPES)}")
        if self.keys not in ATTENTION_KEYS:
            raise OptionError(f"attention keys {self.keys!r}: expected one of {', '.join(ATTENTION_KEYS)}")

    def check_length(self, longest: int) -> None:
        """Refuse queries no trace reaches (``longest`` = the longest trace, or prompt + max new tokens)."""
        from .errors import OptionError

        bad = [q for q in self.queries or () if q >= longest]
        if bad:
            raise OptionError(
                f"--attention-queries: position {bad[0]} is beyond the longest possible trace ({longest} tokens); "
                "no attention would be stored"
            )

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        cfg = model.config
        before = getattr(cfg, ATTN_IMPLEMENTATION_ATTR)
        handles = []
        layers = decoder_layers(model)
        bad = [li for li in self.layers if li >= len(layers)]
        if bad:
            from .errors import OptionError

            raise OptionError(f"--attention-layers: layer {bad[0]} does not exist (the model has {len(layers)})")
        try:
            setattr(cfg, ATTN_IMPLEMENTATION_ATTR, "eager")
            for li in self.layers:
                attn = getattr(layers[li], self_attn_attr(model))
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

    def _stored(self, full: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``full`` ``[1, heads, n]`` float32 -> the tensor to store (visible keys only unless a leak)."""
        dtype = ATTENTION_DTYPES[self.dtype]
        if self.keys == "all" or bool((full[..., ~visible] != 0).any()):
            return full.to(dtype)
        return full[..., visible].to(dtype).contiguous()

    def after_chunk(self, view: Any, start: int, end: int) -> None:
        from .masks import visible_at

        n = view.schedule.n_tokens
        wanted = [q for q in (self.queries if self.queries is not None else range(n)) if start <= q < end]
        if not wanted:
            return
        pos = view.cache.pos  # [batch, slots] after this forward
        visible = {
            (r, q): torch.from_numpy(visible_at(view.schedules[r], q, n))
            for r in range(len(view.traces))
            for q in wanted
        }
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
                    stored = self._stored(full, visible[(r, q)])
                    self.sink.add_attention(AttnItem(trace.trace_id, view.variant, li, q, stored))
        self._last.clear()


def default_captures(
    layers: Sequence[int] | None = None,
    evicted_block: bool = False,
    attention_layers: Sequence[int] = (),
    attention_queries: Sequence[int] | None = None,
) -> list[Capture]:
    """The captures a ``generate``/``replay`` command asks for (memento K/V always).

    Raises OptionError when ``attention_queries`` is given without ``attention_layers`` (it would be ignored).
    """
    if attention_queries is not None and not attention_layers:
        from .errors import OptionError

        raise OptionError(
            "--attention-queries: needs --attention-layers (which layers' attention to store at those queries)"
        )
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
    "ATTENTION_DTYPES",
    "ATTENTION_REL_PRECISION",
    "attention_bytes",
    "expand_attention",
    "default_captures",
]
