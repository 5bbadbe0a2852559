"""The real-trace passcode task (paper §6.2.2): a sentence with a 5-digit passcode is inserted at the start of
one block of a real Memento trace, then the passcode is substituted token by token for each sample.

:class:`TracePasscodeTask` implements :class:`.tasks.PasscodeTask` for such a trace. Its masking is the real
model's (default :data:`REAL_MASKING`, the paper's Qwen3 setting: keep 0, delimiters stay), never the toy's.
Every sample shares the tokens before the passcode, so :func:`extract_with_prefix` computes that prefix's K/V
once and each batch recomputes only from the passcode on (the paper's T2 onwards); the result equals a full
dense replay (tests check it).

Trace files of any format are read by the one trace layer (:func:`memento_lens.runtime.traces.load_traces`:
validated, the problem in the tokenizer's chat template, ChatML without one), giving the same token ids as
``ingest``/``replay``; the passcode sentence is then inserted at token level after the target block's
``<|block_start|>`` (:func:`build_passcode_trace`), so every other token is the trace's own.

Token-level substitution: the template passcode's digit tokens are replaced by each sample's digit tokens. A
tokenizer that encodes some passcode in a different number of tokens would shift every later position; such
samples are skipped and counted (``PasscodeSamples.skipped``), never silently changed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds, world_config
from memento_lens.runtime.schedule import Schedule, compute_schedule
from memento_lens.runtime.trace import Trace

from .features import Condition, MementoFeatures, ProbeInputError
from .tasks import PasscodeSamples, PasscodeTask

# The paper's real-model setting (Qwen3: delimiters stay in the cache; §6.2.2 probes with keep 0).
REAL_MASKING = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0)

PASSCODE_PREFIX = "The passcode is "
PASSCODE_SUFFIX = ". "
TEMPLATE_PASSCODE = "13579"  # no repeated digits: the common token count for merging tokenizers


@dataclass
class PasscodeTrace:
    """A real trace with a passcode slot.

    Attributes:
        token_ids: ``[T]`` the template (passcode ``13579``).
        prompt_len: prompt tokens.
        passcode_slot: ``[n_tokens]`` positions of the passcode's tokens.
        schedule: the keep-0 schedule of the template.
        memento_spans: ``{block: [positions]}`` ``<|summary_start|>`` .. ``<|summary_end|>`` of each complete memento.
        target_block: 0-based block that holds the passcode.
    """

    token_ids: np.ndarray
    prompt_len: int
    passcode_slot: np.ndarray
    schedule: Schedule
    memento_spans: dict[int, np.ndarray]
    target_block: int
    source: str = ""

    @property
    def n_blocks(self) -> int:
        return len(self.memento_spans)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def load_trace(path: str | Path, tokenizer: Any) -> Trace:
    """The (first) trace of a trace file, read by the one trace layer (:func:`memento_lens.runtime.traces.load_traces`:
    any format, validated, the problem in the tokenizer's chat template), tokenized with ``tokenizer``.

    Raises:
        ProbeInputError: the file holds no trace (its reading errors name the file and row).
    """
    from memento_lens.runtime.traces import load_traces

    for trace in load_traces(path, tokenizer, strict=True):
        return trace
    raise ProbeInputError(f"--trace {path}: no trace in the file")


def build_passcode_trace(
    trace: Trace,
    tokenizer: Any,
    tokens: MementoTokenIds,
    config: BlockMaskingConfig,
    target_block: int | None = 1,
    source: str = "",
) -> PasscodeTrace:
    """``trace`` with the passcode sentence inserted at token level right after the ``<|block_start|>`` of block
    ``target_block`` (0-based; ``None``: the trace as it is, no passcode). Every other token, the prompt (chat
    template) included, is the trace's own, so the same file gives the same ids here as through ingest/replay.

    Raises:
        ProbeInputError: the trace has no block ``target_block``.
    """
    ids = [int(t) for t in trace.token_ids]
    cfg = tokens.resolve_config(config)
    slot = np.zeros(0, dtype=np.int64)
    if target_block is not None:
        blocks = compute_schedule(ids, cfg, tokens, prompt_len=trace.prompt_len).blocks
        if not 0 <= target_block < len(blocks):
            raise ProbeInputError(
                f"trace {source or trace.trace_id}: has {len(blocks)} blocks, no block {target_block} (0-based) "
                "to hold the passcode"
            )
        at = blocks[target_block].start + 1
        prefix, code = _encode(tokenizer, PASSCODE_PREFIX), _encode(tokenizer, TEMPLATE_PASSCODE)
        slot = np.arange(at + len(prefix), at + len(prefix) + len(code))
        ids = ids[:at] + prefix + code + _encode(tokenizer, PASSCODE_SUFFIX) + ids[at:]
    sched = compute_schedule(ids, cfg, tokens, prompt_len=trace.prompt_len)
    spans = {
        s.block: np.arange(s.summary_start, s.summary_end + 1)
        for s in sched.blocks
        if s.summary_start is not None and s.summary_end is not None
    }
    return PasscodeTrace(
        token_ids=np.asarray(ids, dtype=np.int64),
        prompt_len=trace.prompt_len,
        passcode_slot=slot,
        schedule=sched,
        memento_spans=spans,
        target_block=-1 if target_block is None else target_block,
        source=source,
    )


def passcode_samples(trace: PasscodeTrace, tokenizer: Any, n: int, seed: int, n_digits: int = 5) -> PasscodeSamples:
    """``n`` random passcodes substituted into the template; samples whose token count differs are skipped."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 10, size=(n, n_digits))
    rows, labels, skipped = [], [], 0
    width = len(trace.passcode_slot)
    cache: dict[str, list[int]] = {}
    for code in codes:
        text = "".join(str(int(d)) for d in code)
        enc = cache.get(text)
        if enc is None:
            enc = cache[text] = _encode(tokenizer, text)
        if len(enc) != width:
            skipped += 1
            continue
        ids = trace.token_ids.copy()
        ids[trace.passcode_slot] = enc
        rows.append(ids)
        labels.append(code)
    reasons = {f"passcode encodes in a token count other than the template's {width}": skipped} if skipped else {}
    if not rows:
        raise ProbeInputError(
            f"trace {trace.source or '?'}: every passcode changed the block's token count "
            f"(template {width} tokens); this tokenizer cannot take a token-level substitution"
        )
    distinct_codes = len({tuple(c) for c in labels})
    distinct_tokens = len({tuple(r[trace.passcode_slot]) for r in rows})
    if distinct_tokens < distinct_codes:
        raise ProbeInputError(
            f"trace {trace.source or '?'}: the tokenizer maps {distinct_codes} distinct passcodes "
            f"to only {distinct_tokens} token sequences (unknown-token digits?); the passcode "
            "cannot be represented"
        )
    return PasscodeSamples(token_ids=np.stack(rows), labels=np.stack(labels), skipped=skipped, skip_reasons=reasons)


# -- the task --------------------------------------------------------------------------------------------------
class TracePasscodeTask(PasscodeTask):
    """A real Memento trace with a passcode sentence substituted into block ``target`` (see the module doc).

    The memento texts do not change with the passcode (token-level substitution inside the block only), so
    the text channel carries nothing: its ceiling is chance, exactly.

    Args:
        trace_path: a trace file of any format (:func:`load_trace`), or a :class:`Trace` read already.
        tokenizer, tokens: the model's tokenizer (with the memento tokens) and their ids.
        target: 0-based block holding the passcode (1 = the paper's T2).
        masking: the block-masking config the model runs under (default :data:`REAL_MASKING`).
    """

    name = "trace"

    def __init__(
        self,
        trace_path: str | Path | Trace,
        tokenizer: Any,
        tokens: MementoTokenIds,
        target: int = 1,
        masking: BlockMaskingConfig | None = None,
    ):
        self.masking = masking if masking is not None else REAL_MASKING
        given = isinstance(trace_path, Trace)
        trace = trace_path if given else load_trace(trace_path, tokenizer)
        self.tokenizer, self.tokens = tokenizer, tokens
        self.path = str(trace.meta.get("source_file", trace.trace_id)) if given else str(trace_path)
        self.trace = build_passcode_trace(trace, tokenizer, tokens, self.masking, target, source=self.path)
        self._vis: dict[str, torch.Tensor] = {}
        self._skipped: tuple[int, dict] = (0, {})

    @property
    def n_blocks(self) -> int:
        return self.trace.n_blocks

    @property
    def target_block(self) -> int:
        return self.trace.target_block

    @property
    def shared_prefix_len(self) -> int:
        """Every sample has the same tokens before the passcode's first token."""
        return int(self.trace.passcode_slot[0]) if len(self.trace.passcode_slot) else 0

    def samples(self, n: int, seed: int) -> PasscodeSamples:
        s = passcode_samples(self.trace, self.tokenizer, n, seed, self.n_digits)
        self._skipped = (s.skipped, s.skip_reasons)
        return s

    def visibility(self, world: str, device: torch.device | str | None = None) -> torch.Tensor:
        self.check_world(world)
        if world not in self._vis:
            from memento_lens.runtime.masks import visibility_mask

            config = self.tokens.resolve_config(world_config(self.masking, world))
            sched = compute_schedule(
                self.trace.token_ids.tolist(), config, self.tokens, prompt_len=self.trace.prompt_len
            )
            self._vis[world] = visibility_mask(sched)
        return self._vis[world].to(device) if device is not None else self._vis[world]

    def memento_positions(self, memento_block: int) -> np.ndarray:
        return self.trace.memento_spans[memento_block]

    def text_positions(self, memento_block: int) -> np.ndarray:
        return np.concatenate([self.trace.memento_spans[b] for b in range(memento_block + 1)])

    def text_ceiling(self, condition: Condition) -> float | None:
        return self.chance

    @property
    def info(self) -> dict[str, Any]:
        return {
            **super().info,
            "trace": self.path,
            "n_tokens": int(len(self.trace.token_ids)),
            "prompt_len": int(self.trace.prompt_len),
            "shared_prefix_len": self.shared_prefix_len,
            "masking": self.masking.to_dict(),
            "skipped_samples": self._skipped[0],
            "skip_reasons": self._skipped[1],
        }


# -- feature extraction with the shared prefix computed once ------------------------------------------------------
@contextlib.contextmanager
def first_layers(model: torch.nn.Module, n: int) -> Iterator[None]:
    """Run only the first ``n`` decoder layers inside the block (K/V of layer i depend on layers <= i only, so
    probing layer 4 of a 30-layer model costs 5 layers); the model is restored in ``finally``."""
    from memento_lens.runtime.hf_paths import DECODER_LAYERS_PATH, LAYER_TYPES_ATTR

    *path, attr = DECODER_LAYERS_PATH.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    full = getattr(parent, attr)
    cfg = model.config
    saved = (cfg.num_hidden_layers, getattr(cfg, LAYER_TYPES_ATTR, None))
    if n >= len(full):
        yield
        return
    try:
        setattr(parent, attr, full[:n])
        cfg.num_hidden_layers = n
        if saved[1] is not None:
            setattr(cfg, LAYER_TYPES_ATTR, list(saved[1])[:n])
        yield
    finally:
        setattr(parent, attr, full)
        cfg.num_hidden_layers = saved[0]
        if saved[1] is not None:
            setattr(cfg, LAYER_TYPES_ATTR, saved[1])


@torch.inference_mode()
def prefix_cache(model: torch.nn.Module, prefix_ids: torch.Tensor, visible: torch.Tensor) -> list[tuple]:
    """Per layer ``(keys, values)`` ``[1, kv_heads, p, d_head]`` of ``prefix_ids [p]`` under ``visible[:p, :p]``."""
    from memento_lens.runtime.dense import dense_forward

    p = int(prefix_ids.shape[0])
    out = dense_forward(model, prefix_ids.unsqueeze(0), visible[:p, :p])
    return list(zip(out.keys, out.values))


@torch.inference_mode()
def forward_from_prefix(
    model: torch.nn.Module, prefix: Sequence[tuple], suffix_ids: torch.Tensor, visible: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """K/V of ``prefix + suffix`` for a batch, computing only the suffix.

    Args:
        prefix: from :func:`prefix_cache` (``p`` positions, shared by every row).
        suffix_ids: ``[b, s]`` tokens at positions ``p .. p + s - 1``.
        visible: ``[p + s, p + s]`` (or larger) bool visibility of the whole sequence.
    Returns:
        per layer keys and values ``[b, kv_heads, p + s, d_head]`` (post-RoPE, as cached).
    """
    from memento_lens.runtime.hf_paths import (
        CACHE_DATA_KWARG,
        CACHE_INPUT_KWARG,
        CACHE_KEYS_ATTR,
        CACHE_VALUES_ATTR,
        LOGITS_TO_KEEP_KWARG,
        cache_layers,
        output_cache,
    )
    from memento_lens.runtime.masks import additive_mask
    from transformers import DynamicCache

    b, s = suffix_ids.shape
    p = int(prefix[0][0].shape[2])
    data = [(k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous()) for k, v in prefix]
    cache = DynamicCache(**{CACHE_DATA_KWARG: data})
    dtype = next(model.parameters()).dtype
    mask = additive_mask(visible[p : p + s, : p + s].to(suffix_ids.device), dtype=dtype)
    mask = mask.expand(b, -1, -1, -1) if mask.shape[0] == 1 else mask
    pos = torch.arange(p, p + s, device=suffix_ids.device).unsqueeze(0).expand(b, -1)
    # Only K/V are wanted: the vocabulary projection of one position instead of all (it dominates small LMs).
    out = model(
        input_ids=suffix_ids,
        attention_mask=mask,
        position_ids=pos,
        use_cache=True,
        **{CACHE_INPUT_KWARG: cache, LOGITS_TO_KEEP_KWARG: 1},
    )
    layers = cache_layers(output_cache(out))
    return [getattr(ly, CACHE_KEYS_ATTR) for ly in layers], [getattr(ly, CACHE_VALUES_ATTR) for ly in layers]


def extract_with_prefix(
    model: torch.nn.Module,
    input_ids: torch.Tensor | np.ndarray,
    visible: torch.Tensor,
    positions: Mapping[int, np.ndarray],
    layers: Sequence[int],
    labels: torch.Tensor | np.ndarray,
    prefix_len: int,
    *,
    wanted: Iterable[tuple[int, int]] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    store_dtype: torch.dtype = torch.float16,
    progress: Callable[[int], None] | None = None,
) -> MementoFeatures:
    """:func:`.features.extract_memento_kv` for samples that share their first ``prefix_len`` tokens: the prefix
    K/V are computed once, each batch forwards only positions ``prefix_len ..`` (same arguments and result).

    Positions inside the prefix (the causal control's memento) read the shared prefix K/V, the same for every row.

    Raises:
        ProbeInputError: the rows differ inside the claimed prefix.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    n, t = ids.shape
    if visible.shape != (t, t):
        raise ProbeInputError(f"visibility mask {tuple(visible.shape)} does not match sequence length {t}")
    if not bool((ids[:, :prefix_len] == ids[:1, :prefix_len]).all()):
        raise ProbeInputError(f"samples differ within the first {prefix_len} tokens: no shared prefix to reuse")
    pairs = list(wanted) if wanted is not None else [(mb, ly) for mb in positions for ly in layers]
    last = max(int(np.max(positions[mb])) for mb, _ in pairs) + 1
    vis = visible[:last, :last].to(dev)
    pos_t = {mb: torch.as_tensor(np.asarray(p), dtype=torch.long, device=dev) for mb, p in positions.items()}
    chunks: dict[tuple[int, int], list[torch.Tensor]] = {pair: [] for pair in pairs}
    with first_layers(model, max(ly for _, ly in pairs) + 1):
        prefix = prefix_cache(model, ids[0, :prefix_len].to(dev), vis)
        for s in range(0, n, batch_size):
            keys, values = forward_from_prefix(model, prefix, ids[s : s + batch_size, prefix_len:last].to(dev), vis)
            for mb, ly in pairs:
                k = keys[ly].index_select(2, pos_t[mb])
                v = values[ly].index_select(2, pos_t[mb])
                chunks[(mb, ly)].append(torch.cat([k, v], dim=-1).to("cpu", store_dtype))
            if progress is not None:
                progress(min(s + batch_size, n))
    return MementoFeatures(
        kv={pair: torch.cat(parts) for pair, parts in chunks.items()},
        labels=torch.as_tensor(np.asarray(labels), dtype=torch.long),
        positions={mb: np.asarray(p) for mb, p in positions.items()},
    )
