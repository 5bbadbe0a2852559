"""Trace statistics as tidy DataFrames: blocks per trace, block and memento sizes, compression ratios.

Compression ratio = memento size / block size (per block; the paper's Fig. 6 uses characters). Token
counts are block *content* and memento *content* tokens (delimiters excluded), from the roles the
schedule assigns; character counts come from the ingested text (``meta['block_chars']``,
``meta['memento_chars']``) and are NaN when a trace carries none (e.g. token-only vLLM rows).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds
from memento_lens.runtime.trace import Role, Trace, assign_roles

from .kv import fast_schedule

BLOCK_COLUMNS = [
    "trace",
    "domain",
    "block",
    "block_tokens",
    "memento_tokens",
    "block_chars",
    "memento_chars",
    "ratio_tokens",
    "ratio_chars",
]
_CFG = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0, require_assistant_section=False)


def block_stats(traces: Iterable[Trace], tokens: MementoTokenIds) -> pd.DataFrame:
    """One row per completed block (a block with its memento): sizes and compression ratios."""
    frames = []
    for t in traces:
        ids = np.asarray(t.token_ids, dtype=np.int64)
        sched = fast_schedule(ids, _CFG, tokens, prompt_len=t.prompt_len)
        roles = assign_roles(sched, ids, tokens)
        nb = len(sched.blocks)
        if nb == 0:
            continue
        is_block = roles.role == Role.BLOCK.value
        is_mem = roles.role == Role.MEMENTO.value
        btok = np.bincount(roles.block[is_block], minlength=nb)[:nb]
        mtok = np.bincount(roles.block[is_mem], minlength=nb)[:nb]
        bchars = _chars(t.meta.get("block_chars"), nb)
        mchars = _chars(t.meta.get("memento_chars"), nb)
        complete = np.array([s.complete for s in sched.blocks])
        frames.append(
            pd.DataFrame(
                {
                    "trace": t.trace_id,
                    "domain": str(t.meta.get("domain") or "unknown"),
                    "block": np.arange(nb),
                    "block_tokens": btok,
                    "memento_tokens": mtok,
                    "block_chars": bchars,
                    "memento_chars": mchars,
                }
            )[complete]
        )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in BLOCK_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    df["ratio_tokens"] = df["memento_tokens"] / df["block_tokens"].where(df["block_tokens"] > 0)
    df["ratio_chars"] = df["memento_chars"] / df["block_chars"].where(df["block_chars"] > 0)
    return df[BLOCK_COLUMNS]


def _chars(values, n: int) -> np.ndarray:
    if isinstance(values, list) and len(values) == n:
        return np.asarray(values, dtype=float)
    return np.full(n, np.nan)


def trace_stats(blocks: pd.DataFrame) -> pd.DataFrame:
    """One row per trace: n_blocks, total block/memento tokens and the trace-level compression."""
    g = blocks.groupby(["trace", "domain"], sort=False)
    out = g.agg(
        n_blocks=("block", "size"),
        block_tokens=("block_tokens", "sum"),
        memento_tokens=("memento_tokens", "sum"),
        block_chars=("block_chars", "sum"),
        memento_chars=("memento_chars", "sum"),
    ).reset_index()
    out["compression_tokens"] = out["block_tokens"] / out["memento_tokens"].where(out["memento_tokens"] > 0)
    return out


def domain_stats(blocks: pd.DataFrame) -> pd.DataFrame:
    """Per domain (and ``all``): traces, median blocks per trace, mean/median block and memento sizes,
    median compression ratio (chars and tokens)."""
    parts = [blocks] + ([blocks.assign(domain="all")] if blocks["domain"].nunique() > 1 else [])
    df = pd.concat(parts, ignore_index=True)
    per_trace = df.groupby(["domain", "trace"]).size().rename("n_blocks").reset_index()
    agg = df.groupby("domain").agg(
        blocks=("block", "size"),
        mean_block_tokens=("block_tokens", "mean"),
        mean_memento_tokens=("memento_tokens", "mean"),
        median_block_chars=("block_chars", "median"),
        median_memento_chars=("memento_chars", "median"),
        median_ratio_chars=("ratio_chars", "median"),
        median_ratio_tokens=("ratio_tokens", "median"),
    )
    agg.insert(0, "traces", per_trace.groupby("domain").size())
    agg.insert(1, "median_blocks_per_trace", per_trace.groupby("domain")["n_blocks"].median())
    return agg.reset_index()


def blocks_from_tokens_table(tokens: pd.DataFrame, traces: pd.DataFrame | None = None) -> pd.DataFrame:
    """Block statistics (token counts only) from a run directory's ``tokens.parquet``."""
    sub = tokens[tokens["role"].isin([Role.BLOCK.value, Role.MEMENTO.value]) & (tokens["block"] >= 0)]
    counts = sub.groupby(["trace", "block", "role"], sort=False).size().unstack("role", fill_value=0)
    counts = counts.reindex(columns=[Role.BLOCK.value, Role.MEMENTO.value], fill_value=0)
    counts.columns = ["block_tokens", "memento_tokens"]
    counts = counts[counts["memento_tokens"] > 0].reset_index()
    order = {t: i for i, t in enumerate(pd.unique(tokens["trace"]))}  # keep the table's trace order
    counts = counts.sort_values(
        ["trace", "block"], key=lambda c: c.map(order) if c.name == "trace" else c, kind="stable"
    )
    df = pd.DataFrame(
        {
            "trace": counts["trace"].astype(str),
            "block": counts["block"].astype(int),
            "block_tokens": counts["block_tokens"],
            "memento_tokens": counts["memento_tokens"],
        }
    )
    dom = {}
    if traces is not None and "domain" in traces:
        dom = dict(zip(traces["trace"].astype(str), traces["domain"].astype(str)))
    df.insert(1, "domain", [dom.get(t) or "unknown" for t in df["trace"]])
    df["block_chars"] = np.nan
    df["memento_chars"] = np.nan
    df["ratio_tokens"] = df["memento_tokens"] / df["block_tokens"].where(df["block_tokens"] > 0)
    df["ratio_chars"] = np.nan
    return df[BLOCK_COLUMNS]
