"""The one place a chat template is applied: a problem (one user turn) as the model sees it.

Every consumer that turns a bare problem into prompt text goes through :func:`chat_prompt`: trace files
(:class:`~.tokenizer.TextTokenizer.prompt_text`, hence ingest, replay, the passcode task) and string prompts for
generation (:func:`memento_lens.runtime.generate.encode_prompts`).
"""

from __future__ import annotations

from typing import Any

from memento_lens.runtime.config import IM_START

IM_END = "<|im_end|>"


def chatml_prompt(problem: str) -> str:
    """The paper's prompt format: ChatML, one user turn, the assistant turn opened."""
    return f"{IM_START}user\n{problem}{IM_END}\n{IM_START}assistant\n"


def has_chat_template(tokenizer: Any) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None and bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, problem: str) -> str | None:
    """``problem`` in ``tokenizer``'s own chat template (one user turn, generation prompt added), as text;
    ``None`` when the tokenizer has no chat template (the caller picks its fallback: ChatML for trace files,
    the bare text for generation prompts)."""
    if not has_chat_template(tokenizer):
        return None
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
    )
