"""Passcode features: keys and values at memento token positions, from a batched replay with block masking.

Indexing (0-based everywhere, as in the rest of memento-lens): the paper's T1/M1 is our block 0. The paper
injects the passcode into T2 (= our ``target_block`` 1) and reads

====================  =======================  ===========================
condition             paper                    our memento block
====================  =======================  ===========================
``causal_control``    M1 (before T2 existed)   ``target_block - 1`` (0)
``direct``            M2 (saw T2)              ``target_block`` (1)
``masked`` +k         M(2+k) (T2 evicted)      ``target_block + k`` (1 + k)
====================  =======================  ===========================

Features of one (memento block, layer): ``[n, kv_heads, n_positions, 2 * d_head]`` (K and V concatenated on
the last axis, keys post-RoPE as cached); :meth:`MementoFeatures.matrix` flattens all heads (``head=-1``)
or one head to ``[n, features]``. Every sample of one extraction shares its positions (toy sequences have a
fixed layout; real-trace samples differ only in the substituted passcode tokens), so one visibility mask
serves the whole batch and the runtime's batched forwards (:mod:`memento_lens.runtime.forwards`) replay it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from memento_lens.runtime.errors import OptionError
from memento_lens.runtime.forwards import DEFAULT_MEMORY_BUDGET, kv_batches, rows_per_batch, sample_dependent
from memento_lens.runtime.rundir import schema as run_schema

CONDITIONS = ("direct", "masked", "causal_control")


class ProbeInputError(OptionError):
    """Bad probe input (too few blocks, distance beyond the trace, layer out of range); names the option."""


@dataclass(frozen=True)
class Condition:
    """Which memento is read for a target block.

    Attributes:
        name: ``direct`` | ``masked`` | ``causal_control``.
        distance: 0 direct, k >= 1 masked (memento of ``target + k``), -1 causal control.
        memento_block: 0-based block whose memento supplies the features.
    """

    name: str
    distance: int
    memento_block: int

    def to_dict(self) -> dict:
        return {"condition": self.name, "distance": self.distance, "memento_block": self.memento_block}


@dataclass(frozen=True)
class Skip:
    """A requested (condition, distance, layer) that cannot be run, and why (reported, never silent)."""

    condition: str
    distance: int
    reason: str
    layer: int | None = None

    def to_dict(self) -> dict:
        return {"condition": self.condition, "distance": self.distance, "layer": self.layer, "reason": self.reason}


def passcode_conditions(
    target_block: int, n_blocks: int, distances: Iterable[int] = range(1, 8), conditions: Sequence[str] = CONDITIONS
) -> tuple[list[Condition], list[Skip]]:
    """Conditions for a passcode in ``target_block`` of a sequence with ``n_blocks`` completed mementos.

    Raises:
        ProbeInputError: the masked condition is asked for but no memento follows the target (a trace
            needs at least 3 blocks for target block 1), or an unknown condition.
    Returns:
        (conditions to run, skipped requests with the reason).
    """
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ProbeInputError(f"--conditions: unknown {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
    if not 0 <= target_block < n_blocks:
        raise ProbeInputError(f"target block {target_block} outside the trace's {n_blocks} blocks")
    out: list[Condition] = []
    skips: list[Skip] = []
    if "causal_control" in conditions:
        if target_block >= 1:
            out.append(Condition("causal_control", -1, target_block - 1))
        else:
            skips.append(Skip("causal_control", -1, "target block 0 has no earlier memento"))
    if "direct" in conditions:
        out.append(Condition("direct", 0, target_block))
    if "masked" in conditions:
        if target_block + 1 >= n_blocks:
            raise ProbeInputError(
                f"masked condition needs a memento after the target block: the trace has {n_blocks} blocks, "
                f"target block {target_block} (0-based) needs at least {target_block + 2} "
                f"(at least 3 blocks for the paper's T2 with a causal control)"
            )
        for k in sorted(set(int(d) for d in distances)):
            if k < 1:
                raise ProbeInputError(f"--distances: masked distances start at 1, got {k}")
            if target_block + k < n_blocks:
                out.append(Condition("masked", k, target_block + k))
            else:
                skips.append(
                    Skip(
                        "masked",
                        k,
                        f"distance {k} beyond the trace: memento of block {target_block + k} "
                        f"does not exist ({n_blocks} blocks)",
                    )
                )
    return out, skips


def resolve_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Layer indices (negative counts from the end); None = all. Out of range raises naming ``--layers``."""
    if layers is None or len(layers) == 0:
        return list(range(n_layers))
    out = []
    for layer in layers:
        idx = layer + n_layers if layer < 0 else layer
        if not 0 <= idx < n_layers:
            raise ProbeInputError(
                f"--layers: layer {layer} out of range for a model with {n_layers} layers "
                f"(valid 0..{n_layers - 1} or -1..-{n_layers})"
            )
        if idx not in out:
            out.append(idx)
    return sorted(out)


@dataclass
class MementoFeatures:
    """K/V features at memento positions.

    Attributes:
        kv: ``{(memento_block, layer): [n, kv_heads, n_positions, 2 * d_head]}`` (stored dtype, float32 by default).
        labels: ``[n, n_digits]`` int64 passcode digits.
        positions: ``{memento_block: [n_positions]}`` token positions read.
    """

    kv: dict[tuple[int, int], torch.Tensor]
    labels: torch.Tensor
    positions: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def layers(self) -> list[int]:
        return sorted({layer for _, layer in self.kv})

    def matrix(self, memento_block: int, layer: int, head: int = -1) -> torch.Tensor:
        """``[n, features]`` float32: all heads (``head=-1``) or one KV head."""
        t = self.kv[(memento_block, layer)]
        if head >= 0:
            if head >= t.shape[1]:
                raise ProbeInputError(f"--heads: head {head} out of range ({t.shape[1]} KV heads)")
            t = t[:, head]
        return t.reshape(t.shape[0], -1).float()

    # -- cache in a run directory (safetensors through RunStore) --------------------------------------------
    def save(self, store, prefix: str = "features") -> None:
        """Write ``<prefix>/layer-XX.safetensors`` + ``<prefix>/labels.safetensors`` and a typed index
        (``schema.FEATURE_INDEX``; the paths are the schema's feature-cache artifacts)."""
        rows = []
        for layer in self.layers():
            tensors = {}
            for (mb, ly), t in self.kv.items():
                if ly == layer:
                    name = f"memento{mb}"
                    tensors[name] = t
                    rows.append(
                        {
                            "memento_block": mb,
                            "layer": layer,
                            "file": _layer_file(prefix, layer),
                            "tensor": name,
                            "positions": [int(p) for p in self.positions.get(mb, [])],
                        }
                    )
            store.write_tensors(_layer_file(prefix, layer), tensors)
        store.write_tensors(_labels_file(prefix), {"labels": self.labels})
        store.write_table(_index_file(prefix), run_schema.FEATURE_INDEX.frame(rows))

    @classmethod
    def load(cls, store, prefix: str = "features") -> "MementoFeatures":
        index = store.read_table(_index_file(prefix))
        labels = store.read_tensors(_labels_file(prefix))["labels"]
        kv: dict[tuple[int, int], torch.Tensor] = {}
        positions: dict[int, np.ndarray] = {}
        files: dict[str, dict[str, torch.Tensor]] = {}
        for row in index.itertuples():
            if row.file not in files:
                files[row.file] = store.read_tensors(row.file)
            kv[(int(row.memento_block), int(row.layer))] = files[row.file][row.tensor]
            positions[int(row.memento_block)] = np.asarray(row.positions, dtype=np.int64)
        return cls(kv=kv, labels=labels, positions=positions)


def _split(prefix: str) -> tuple[str, str]:
    """A world's feature prefix (``features/<checkpoint>/<world>``) as (feature set prefix, world)."""
    head, _, world = prefix.rpartition("/")
    return head, world


def _layer_file(prefix: str, layer: int) -> str:
    return run_schema.FEATURE_LAYER.at(prefix=_split(prefix)[0], world=_split(prefix)[1], layer=layer).lstrip("/")


def _labels_file(prefix: str) -> str:
    return run_schema.FEATURE_LABELS.at(prefix=_split(prefix)[0], world=_split(prefix)[1]).lstrip("/")


def _index_file(prefix: str) -> str:
    return run_schema.features_index_path(*_split(prefix)).lstrip("/")


@dataclass(frozen=True)
class KVPlan:
    """How :func:`extract_memento_kv` computes a sample set's features (also how a sharded run splits it).

    Attributes:
        shared: (memento block, layer) pairs whose positions cannot depend on the tokens that differ between rows:
            computed from one row and broadcast.
        varying: the other pairs, computed for every row in forwards of ``rows_per_forward`` rows.
        varying_tokens: ``[T]`` bool, tokens that differ between rows of the whole set.
        rows_per_forward: rows per forward of the varying pairs (``batch_size``, capped by the memory budget);
            a slice of the set that starts at a multiple of it is computed in the same forwards.
    """

    shared: list[tuple[int, int]]
    varying: list[tuple[int, int]]
    varying_tokens: np.ndarray
    rows_per_forward: int


def plan_memento_kv(
    model: torch.nn.Module,
    input_ids: torch.Tensor | np.ndarray,
    visible: torch.Tensor,
    positions: Mapping[int, np.ndarray],
    pairs: Sequence[tuple[int, int]],
    *,
    batch_size: int | None = 256,
    prefix_len: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    varying_tokens: np.ndarray | None = None,
) -> KVPlan:
    """The :class:`KVPlan` of ``input_ids [n, T]`` (``varying_tokens``: given when ``input_ids`` is a slice)."""
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    vary = (ids != ids[:1]).any(0).numpy() if varying_tokens is None else np.asarray(varying_tokens, dtype=bool)
    dependent = sample_dependent(visible, vary)
    varies = {mb: bool(dependent[np.asarray(positions[mb])].any()) for mb in {mb for mb, _ in pairs}}
    varying = [pair for pair in pairs if varies[pair[0]]]
    rows = max(1, int(batch_size or ids.shape[0]))
    if varying:  # the cap kv_batches applies to these pairs' forwards
        last = max(int(np.max(positions[mb])) for mb, _ in varying) + 1
        n_layers = min(max(ly for _, ly in varying) + 1, int(model.config.num_hidden_layers))
        fit = rows_per_batch(model, n_layers, last, last - min(prefix_len, last - 1), memory_budget)
        rows = max(1, min(rows, fit))
    return KVPlan([pair for pair in pairs if not varies[pair[0]]], varying, vary, rows)


def extract_memento_kv(
    model: torch.nn.Module,
    input_ids: torch.Tensor | np.ndarray,
    visible: torch.Tensor,
    positions: Mapping[int, np.ndarray],
    layers: Sequence[int],
    labels: torch.Tensor | np.ndarray,
    *,
    wanted: Iterable[tuple[int, int]] | None = None,
    batch_size: int | None = 256,
    device: torch.device | str | None = None,
    store_dtype: torch.dtype = torch.float32,
    progress: Callable[[int], None] | None = None,
    prefix_len: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    on_batch: Callable[[int, int, dict[tuple[int, int], torch.Tensor]], None] | None = None,
    varying_tokens: np.ndarray | None = None,
) -> MementoFeatures:
    """Replay ``input_ids`` with one shared visibility mask and gather K/V at memento positions.

    The forwards are the runtime's (:func:`memento_lens.runtime.forwards.kv_batches`): only the layers up to the
    deepest one asked for run, only positions up to the last one read, the shared prefix once. Pairs whose
    positions cannot depend on the tokens that differ between rows (every memento in the restart world, which
    never sees the passcode's block; the causal control's memento) are computed from one row and broadcast:
    exact, since equal inputs give equal K/V.

    Args:
        model: HF causal LM (eval mode).
        input_ids: ``[n, T]``; every row has the same layout.
        visible: ``[T, T]`` bool visibility (the block-masking schedule's mask, e.g. keep 0).
        positions: ``{memento_block: [n_positions]}`` token positions to read per memento.
        layers: layer indices to keep.
        labels: ``[n, n_digits]`` passcode digits.
        wanted: restrict to these (memento_block, layer) pairs (saves memory in large sweeps); default all.
        batch_size: at most this many sequences per forward (also capped by ``memory_budget`` bytes of working
            memory per batch, so peak memory does not grow with ``n``).
        device: where the forward runs (default: the model's device).
        store_dtype: dtype the features are kept in. float32 by default: on SmolLM2 the passcode moves a masked
            memento's layer-4 K/V by less than float16's rounding in 94% of the elements (and by 1/1,400 of
            bfloat16 compute's error; docs/RESULTS.md), so half precision would erase what the probe reads.
        progress: called with the number of sequences done after each batch.
        prefix_len: leading tokens shared by every row: their K/V are computed once; 0 replays every row whole.
        on_batch: called as ``on_batch(start, stop, {pair: [stop - start, kv_heads, P, 2 * d_head]})`` after each
            batch (to stream features out, e.g. into a cache, while the rest runs).
        varying_tokens: ``[T]`` bool, the tokens that differ between rows of the whole sample set, when
            ``input_ids`` is a slice of it (a work unit of ``probes.sharded``): the slice is then computed as the
            whole set computes it (:func:`plan_memento_kv`); default: from ``input_ids``.
    """
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    n, t = ids.shape
    if visible.shape != (t, t):
        raise ProbeInputError(f"visibility mask {tuple(visible.shape)} does not match sequence length {t}")
    if prefix_len and not bool((ids[:, :prefix_len] == ids[:1, :prefix_len]).all()):
        raise ProbeInputError(f"samples differ within the first {prefix_len} tokens: no shared prefix to reuse")
    pairs = list(wanted) if wanted is not None else [(mb, ly) for mb in positions for ly in layers]
    pos_t = {mb: torch.as_tensor(np.asarray(p), dtype=torch.long) for mb, p in positions.items()}
    kv_plan = plan_memento_kv(
        model,
        ids,
        visible,
        positions,
        pairs,
        batch_size=batch_size,
        prefix_len=prefix_len,
        memory_budget=memory_budget,
        varying_tokens=varying_tokens,
    )
    out: dict[tuple[int, int], torch.Tensor] = {}

    def run(rows: torch.Tensor, group: list[tuple[int, int]], report: bool) -> dict:
        """Features of ``group`` for ``rows``: one pass of the runtime's batched forward."""
        last = max(int(np.max(positions[mb])) for mb, _ in group) + 1
        got: dict[tuple[int, int], torch.Tensor] = {}
        for batch in kv_batches(
            model,
            rows,
            visible,
            max(ly for _, ly in group) + 1,
            length=last,
            prefix_len=min(prefix_len, last - 1),
            batch_size=kv_plan.rows_per_forward,
            device=device,
            memory_budget=memory_budget,
        ):
            part = {}
            for mb, ly in group:
                idx = pos_t[mb].to(batch.keys[ly].device)
                kv = torch.cat([batch.keys[ly].index_select(2, idx), batch.values[ly].index_select(2, idx)], dim=-1)
                part[(mb, ly)] = kv.to("cpu", store_dtype)
                if (mb, ly) not in got:  # preallocated: no second copy of the features at the end
                    got[(mb, ly)] = torch.empty((len(rows), *kv.shape[1:]), dtype=store_dtype)
                got[(mb, ly)][batch.start : batch.stop] = part[(mb, ly)]
            if report and on_batch is not None:
                on_batch(batch.start, batch.stop, part)
            if report and progress is not None:
                progress(batch.stop)
        return got

    shared = kv_plan.shared
    if shared:  # the same K/V in every row: one row, broadcast
        for pair, kv in run(ids[:1], shared, report=False).items():
            out[pair] = kv.expand(n, *kv.shape[1:]).contiguous()
        if on_batch is not None:
            on_batch(0, n, {pair: out[pair] for pair in shared})
    varying = kv_plan.varying
    if varying:
        out.update(run(ids, varying, report=True))
    elif progress is not None:
        progress(n)
    return MementoFeatures(
        kv={pair: out[pair] for pair in pairs},
        labels=torch.as_tensor(np.asarray(labels), dtype=torch.long),
        positions={mb: np.asarray(p) for mb, p in positions.items()},
    )


# -- toy task ----------------------------------------------------------------------------------------------
def toy_memento_positions(layout, memento_blocks: Iterable[int], span: bool = True) -> dict[int, np.ndarray]:
    """Positions read per memento: the whole span (``<|summary_start|>`` .. ``<|summary_end|>``) or its digits."""
    return {mb: (layout.memento_span(mb) if span else layout.memento(mb)) for mb in memento_blocks}


def toy_passcode_batch(n: int, seed: int, layout=None, target_block: int = 1):
    """``n`` toy sequences; the passcode is the target block's digits (``[n, block_digits]``)."""
    from memento_lens.runtime.toy.task import ToyLayout, sample

    layout = layout or ToyLayout()
    batch = sample(n, np.random.default_rng(seed), layout)
    return batch, batch.digits[:, target_block, :].copy()
