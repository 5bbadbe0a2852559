"""Passcode samples from a real Memento trace: a sentence with a 5-digit passcode is inserted at the start of
one block, then the passcode is substituted token by token for each sample.

Trace files: the Memento JSON examples (``{"problem", "segments": [{"type": "block"|"summary"|"answer",
"text"}]}``; ``../shared/data``). Segments are tokenised one at a time so every span is known exactly:

    prompt  <think>?  (<|block_start|> text <|block_end|> <|summary_start|> text <|summary_end|>)*  </think>? answer

Token-level substitution: the template passcode's digit tokens are replaced by each sample's digit tokens. A
tokenizer that encodes some passcode in a different number of tokens would shift every later position; such
samples are skipped and counted (``PasscodeSamples.skipped``), never silently changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from memento_lens.runtime.config import THINK_END, THINK_START, BlockMaskingConfig, MementoTokenIds
from memento_lens.runtime.schedule import Schedule, compute_schedule

from .features import ProbeInputError

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


@dataclass
class PasscodeSamples:
    """``token_ids [n, T]`` and ``labels [n, 5]`` of the kept samples, plus how many were skipped and why."""

    token_ids: np.ndarray
    labels: np.ndarray
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _single(tokenizer: Any, tok: str) -> int | None:
    return tokenizer.get_vocab().get(tok)


def load_segments(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProbeInputError(f"--trace {path}: unreadable ({exc})") from None
    if isinstance(data, list):
        data = data[0] if data else {}
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise ProbeInputError(f"--trace {path}: expected a Memento JSON trace with a 'segments' list")
    return data


def build_passcode_trace(
    data: dict[str, Any],
    tokenizer: Any,
    tokens: MementoTokenIds,
    config: BlockMaskingConfig,
    target_block: int | None = 1,
    source: str = "",
) -> PasscodeTrace:
    """Tokenise a segmented trace with a passcode sentence at the start of block ``target_block`` (0-based;
    ``None``: the trace as it is, no passcode).

    Raises:
        ProbeInputError: the trace has no block ``target_block``.
    """
    ids: list[int] = _encode(tokenizer, str(data.get("problem", "")))
    think_start, think_end = _single(tokenizer, THINK_START), _single(tokenizer, THINK_END)
    if think_start is not None:
        ids.append(think_start)
    prompt_len = len(ids)
    block, slot = -1, None
    for seg in data["segments"]:
        kind, text = seg.get("type"), str(seg.get("text", ""))
        if kind == "block":
            block += 1
            ids.append(tokens.block_start)
            if block == target_block:
                ids += _encode(tokenizer, PASSCODE_PREFIX)
                code = _encode(tokenizer, TEMPLATE_PASSCODE)
                slot = np.arange(len(ids), len(ids) + len(code))
                ids += code + _encode(tokenizer, PASSCODE_SUFFIX)
            ids += _encode(tokenizer, text) + [tokens.block_end]
        elif kind == "summary":
            ids += [tokens.summary_start] + _encode(tokenizer, text) + [tokens.summary_end]
        elif kind == "answer":
            if think_end is not None:
                ids.append(think_end)
            ids += _encode(tokenizer, text)
    if slot is None and target_block is None:
        slot = np.zeros(0, dtype=np.int64)
    if slot is None:
        raise ProbeInputError(
            f"trace {source or '?'}: has {block + 1} blocks, no block {target_block} (0-based) to hold the passcode"
        )
    sched = compute_schedule(ids, tokens.resolve_config(config), tokens, prompt_len=prompt_len)
    spans = {
        s.block: np.arange(s.summary_start, s.summary_end + 1)
        for s in sched.blocks
        if s.summary_start is not None and s.summary_end is not None
    }
    return PasscodeTrace(
        token_ids=np.asarray(ids, dtype=np.int64),
        prompt_len=prompt_len,
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
