"""Exact vs approximate token counts (``token-counts``). The tokenizers themselves (a real HF tokenizer from a
local path, or the model-free "approx" mode, with its counting rule and its measured error against the exact
Qwen3 tokenizer) live in :mod:`memento_lens.runtime.traces.tokenizer`.
"""

from __future__ import annotations

from typing import Any, Sequence

from memento_lens.runtime.traces.chat import IM_END, chatml_prompt  # noqa: F401  (re-exported)
from memento_lens.runtime.traces.tokenizer import (  # noqa: F401  (re-exported: the tokenizers live in the trace layer)
    APPROX_SPECIALS,
    APPROX_TEXT_ID,
    ENDOFTEXT,
    ApproxTokenizer,
    HFTextTokenizer,
    TextTokenizer,
    load_tokenizer,
)

# -- exact vs approximate token counts ---------------------------------------------------------------------

COUNT_PARTS = ("prompt", "blocks", "mementos", "total")


def _part_counts(trace: Any, tok: TextTokenizer) -> dict[str, int]:
    """Tokens of the prompt, of block contents (delimiters excluded) and of memento texts, and the total."""
    from memento_lens.runtime.config import BlockMaskingConfig
    from memento_lens.runtime.schedule import compute_schedule

    cfg = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0, require_assistant_section=False)
    sched = compute_schedule(list(trace.token_ids), cfg, tok.ids, prompt_len=trace.prompt_len)
    blocks = sum(s.end - s.start - 1 for s in sched.blocks if s.end is not None)
    mementos = sum(
        s.summary_end - s.summary_start - 1
        for s in sched.blocks
        if s.summary_start is not None and s.summary_end is not None
    )
    return {"prompt": int(trace.prompt_len), "blocks": blocks, "mementos": mementos, "total": len(trace.token_ids)}


def compare_token_counts(
    paths: Sequence[Any], exact: str | TextTokenizer = "qwen3", approx: str | TextTokenizer = "approx"
) -> "Any":
    """Per trace and part (prompt, block contents, memento texts, total): tokens under an exact tokenizer and
    an approximate one, and the approximation's relative error ``(approx - exact) / exact``.

    Returns:
        A pandas DataFrame with columns ``trace, part, exact, approx, error`` (error as a fraction).
    """
    import pandas as pd
    from memento_lens.runtime.errors import ConfigError
    from memento_lens.runtime.traces import load_traces

    ex, ap = load_tokenizer(exact), load_tokenizer(approx)
    if isinstance(ex, ApproxTokenizer):  # approx against approx reports 0% error: a comparison of nothing
        raise ConfigError(
            f"--tokenizer {exact if isinstance(exact, str) else ex.name}: the exact side must be a real tokenizer "
            "(qwen3 or a local tokenizer directory); the approximation is what --against measures"
        )
    got: dict[str, dict[str, dict[str, int]]] = {}
    for tok in (ex, ap):
        got[tok.name] = {}
        for path in paths:
            for t in load_traces(path, tok, strict=True):
                got[tok.name][t.trace_id] = _part_counts(t, tok)
    rows = []
    for trace, counts in got[ex.name].items():
        other = got[ap.name][trace]
        for part in COUNT_PARTS:
            e, a = counts[part], other[part]
            rows.append(
                {"trace": trace, "part": part, "exact": e, "approx": a, "error": (a - e) / e if e else float("nan")}
            )
    return pd.DataFrame(rows, columns=["trace", "part", "exact", "approx", "error"])
