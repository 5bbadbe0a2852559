"""Mementify a real checkpoint: add the memento tokens to its vocabulary (the paper's initialisation), make
sure it has a chat template, and save a checkpoint directory every command accepts as ``--model DIR``.

The paper's model (Qwen3) saw ChatML prompts: ``<|im_start|>user\\n{problem}<|im_end|>\\n<|im_start|>assistant\\n``
then ``<think>`` + (block, memento)* + ``</think>`` + answer. A checkpoint keeps its own chat template (SmolLM2's
is ChatML with a default system turn); one without a template gets plain ChatML. Ingestion with the checkpoint's
tokenizer renders problems through that template
(:func:`memento_lens.runtime.traces.chat.chat_prompt`), so real traces tokenize as the model
would see them in a chat.

The result is a base model with a memento-ready vocabulary, not a model trained on mementos: its new token
embeddings are the mean of related words' embeddings + N(0, 0.01) noise, nothing more.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError, OutputError
from .model import INIT_NOISE_STD, RELATED_WORDS, add_memento_tokens, load_model

MEMENTIFY_FILE = "mementify.json"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class MementifyReport:
    """What :func:`mementify` did (also written as ``mementify.json`` in the output directory)."""

    source: str
    out: str
    added_tokens: dict[str, int]
    vocab_before: int
    vocab_after: int
    init_words: dict[str, list[str]]
    init_noise_std: float
    seed: int
    dtype: str
    chat_template: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mementify(
    spec: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    dtype: str | None = "float32",
    overwrite: bool = False,
    cache: str | Path | None = None,
) -> MementifyReport:
    """Load ``spec`` (a preset such as ``smollm2-135m`` or a local checkpoint), add the memento tokens and
    ``<think>``/``</think>`` where missing, and save the result to ``out``.

    Raises:
        OutputError: ``out`` exists (without ``overwrite``) or is not writable; nothing of it is touched.
        ModelError: the spec cannot be loaded or has no tokenizer.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"--out {out} already exists; pass --overwrite to replace it")
    if out.exists() and not (out / MEMENTIFY_FILE).exists():
        raise OutputError(f"--out {out} exists and is not a mementified checkpoint; refusing to replace it")
    theirs = (
        sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if not _checkpoint_file(p))
        if out.exists()
        else []
    )
    if theirs:  # --overwrite replaces the checkpoint mementify wrote, never a file of the user's beside it
        raise OutputError(
            f"--out {out}: holds file(s) mementify did not write ({', '.join(theirs)}); "
            "move them out of the checkpoint folder, or choose another --out"
        )
    t0 = time.perf_counter()
    lm = load_model(spec, dtype=dtype, cache=cache, add_memento=False)
    if lm.tokenizer is None:
        raise ModelError(f"--model {spec}: has no tokenizer, so there is no vocabulary to mementify")
    tok = lm.tokenizer
    before = len(tok)
    ids_before = set(tok.get_vocab().values())
    add_memento_tokens(lm.model, tok, seed=seed, think=True)
    added = {t: i for t, i in tok.get_vocab().items() if i not in ids_before}
    template = "own"
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
        template = "chatml (added)"
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        lm.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        report = MementifyReport(
            source=str(spec),
            out=str(out),
            added_tokens=dict(sorted(added.items(), key=lambda kv: kv[1])),
            vocab_before=before,
            vocab_after=len(tok),
            init_words={t: list(RELATED_WORDS[t]) for t in added if t in RELATED_WORDS},
            init_noise_std=INIT_NOISE_STD,
            seed=seed,
            dtype=str(next(lm.model.parameters()).dtype).replace("torch.", ""),
            chat_template=template,
            seconds=round(time.perf_counter() - t0, 2),
        )
        (tmp / MEMENTIFY_FILE).write_text(json.dumps(report.to_dict(), indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"--out {out}: cannot write the checkpoint ({exc})") from None
    return report


# What a mementified checkpoint holds: HF save_pretrained's model and tokenizer files and our report.
_CHECKPOINT_FILES = {
    MEMENTIFY_FILE,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
}


def _checkpoint_file(p: Path) -> bool:
    return p.is_file() and (
        p.name in _CHECKPOINT_FILES or bool(re.match(r"^model-\d{5}-of-\d{5}\.safetensors$", p.name))
    )


__all__ = ["mementify", "MementifyReport", "CHATML_TEMPLATE", "MEMENTIFY_FILE"]
