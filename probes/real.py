"""The real-trace passcode task (paper §6.2.2): a sentence with a 5-digit passcode is inserted at the start of
one block of a real Memento trace, then the passcode is substituted token by token for each sample.

:class:`TracePasscodeTask` implements :class:`.tasks.PasscodeTask` for such a trace. Its masking is the real
model's (default :data:`REAL_MASKING`, the paper's Qwen3 setting: keep 0, delimiters stay), never the toy's.
Every sample shares the tokens before the passcode (``shared_prefix_len``), so feature extraction
(:func:`.features.extract_memento_kv`, on the runtime's :mod:`memento_lens.runtime.forwards`) computes that
prefix's K/V once and each batch recomputes only from the passcode on (the paper's T2 onwards); the result
equals a full dense replay (tests check it).

Trace files of any format are read by the one trace layer (:func:`memento_lens.runtime.traces.load_traces`:
validated, the problem in the tokenizer's chat template, ChatML without one), giving the same token ids as
``ingest``/``replay``; the passcode sentence is then inserted at token level after the target block's
``<|block_start|>`` (:func:`build_passcode_trace`), so every other token is the trace's own.

Token-level substitution: the template passcode's digit tokens are replaced by each sample's digit tokens. A
tokenizer that encodes some passcode in a different number of tokens would shift every later position; such
samples are skipped and counted (``PasscodeSamples.skipped``), never silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds, world_config
from memento_lens.runtime.schedule import Schedule, compute_schedule
from memento_lens.runtime.trace import Trace

from .features import Condition, ProbeInputError
from .tasks import ALL_WORLDS, WORLDS, PasscodeSamples, PasscodeTask, hide_delimiters

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
        self._codes: dict[str, list[int]] = {}  # passcode text -> token ids
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

    @property
    def worlds(self) -> tuple[str, ...]:
        """``normal``, ``restart``, ``foreign`` and ``delimiter_hidden`` (``same_sum`` needs a memento whose text is
        a known function of the block: the toy's)."""
        return (*WORLDS, "foreign", "delimiter_hidden")

    def world_tokens(self, samples: PasscodeSamples, world: str, seed: int) -> np.ndarray:
        """``foreign``: every sample's passcode tokens replaced by another uniform passcode's (independent of the
        label; one with the template's token count, so every position stays put), drawn from the world's own
        stream; the memento texts are the trace's in every world. Other worlds: the samples' own tokens."""
        self.check_world(world)
        ids = np.array(samples.token_ids, dtype=np.int64, copy=True)
        if world != "foreign":
            return ids
        rng = np.random.default_rng([int(seed), ALL_WORLDS.index(world), 0x7ACE])  # the world's own stream
        slot, width = self.trace.passcode_slot, len(self.trace.passcode_slot)
        filled = np.zeros(len(ids), dtype=bool)
        for _ in range(64):  # redraw codes whose token count differs (rare: a merging tokenizer)
            todo = np.flatnonzero(~filled)
            if not len(todo):
                break
            for row, code in zip(todo, rng.integers(0, 10, size=(len(todo), self.n_digits))):
                enc = self._encode_code("".join(str(int(d)) for d in code))
                if len(enc) == width:
                    ids[row, slot] = enc
                    filled[row] = True
        if not filled.all():
            raise ProbeInputError(f"trace {self.path}: could not draw foreign passcodes of {width} tokens")
        return ids

    def _encode_code(self, text: str) -> list[int]:
        enc = self._codes.get(text)
        if enc is None:
            enc = self._codes[text] = _encode(self.tokenizer, text)
        return enc

    def visibility(self, world: str, device: torch.device | str | None = None) -> torch.Tensor:
        """``normal`` / ``restart`` from the schedule (``foreign``: the normal mask); ``delimiter_hidden``: the
        normal mask with the target block's kept ``<|block_start|>``/``<|block_end|>`` hidden from every position
        after the target's ``<|summary_end|>`` (:func:`.tasks.hide_delimiters`)."""
        self.check_world(world)
        if world not in self._vis:
            if world == "delimiter_hidden":
                span = self.trace.schedule.blocks[self.target_block]
                delims = [span.start, span.end]
                self._vis[world] = hide_delimiters(self.visibility("normal"), delims, int(span.summary_end) + 1)
            elif world == "foreign":
                self._vis[world] = self.visibility("normal")
            else:
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
