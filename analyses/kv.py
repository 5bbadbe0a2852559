"""KV-cache accounting without a model (the Memento paper's Appendix A.3.1).

Replay a token stream through the runtime's eviction schedule and count the tokens the cache holds
after each step, for vanilla and memento configs alike; turn token counts into bytes with
``bytes/token = 2 (K and V) × layers × kv_heads × head_dim × dtype bytes``.

The occupancy type (:class:`~memento_lens.runtime.occupancy.Occupancy`), the bytes-per-token rule
(:class:`~memento_lens.runtime.occupancy.KVSpec`) and the units live in ``runtime/occupancy.py`` (the runtime
measures the same quantities); this module adds presets, the fast model-free schedule and the tables.
Units: KB = 1024 bytes (the paper's "144 KB/token" for Qwen3-8B is 147,456 bytes), GB = 2**30 bytes,
ktok = 1,000 tokens. Peak is the maximum occupancy over the whole stream (prompt included); AUC is the
area under occupancy over the *generated* tokens (steps ``prompt_len .. n-1``), in GB·ktok.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from memento_lens.runtime.config import BlockMaskingConfig, ConfigError, MementoTokenIds
from memento_lens.runtime.occupancy import (  # noqa: F401  (re-exported: analyses.kv is where users look)
    GB,
    KB,
    KTOK,
    KVSpec,
    Occupancy,
    schedule_occupancy,
)
from memento_lens.runtime.rundir.tables import occupancies_from_table, occupancy_table  # noqa: F401  (re-exported)
from memento_lens.runtime.schedule import (  # noqa: F401  (fast_schedule re-exported: analyses.kv is where users look)
    Schedule,
    compute_schedule,
    fast_schedule,
)
from memento_lens.runtime.trace import Trace

PRESETS: dict[str, KVSpec] = {
    "qwen3-8b": KVSpec("qwen3-8b", layers=36, kv_heads=8, head_dim=128),  # 144 KB/token
    "qwen3-32b": KVSpec("qwen3-32b", layers=64, kv_heads=8, head_dim=128),  # 256 KB/token
    "phi-4-reasoning": KVSpec("phi-4-reasoning", layers=40, kv_heads=10, head_dim=128),  # 200 KB/token
}


def resolve_spec(spec: str | os.PathLike | KVSpec | None) -> KVSpec:
    """A preset name, a path to a HF config.json (or model dir), or a KVSpec; None = qwen3-8b."""
    if spec is None:
        return PRESETS["qwen3-8b"]
    if isinstance(spec, KVSpec):
        return spec
    if str(spec).lower() in PRESETS:
        return PRESETS[str(spec).lower()]
    if Path(spec).exists():
        return KVSpec.from_hf_config(spec)
    raise ConfigError(f"--model {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a HF config.json path")


# -- the schedule, fast ------------------------------------------------------------------------------


# -- accounting --------------------------------------------------------------------------------------


def default_configs(
    mask_delimiters: bool = False, keep_last_n_blocks: int = 0, restart: bool = False
) -> dict[str, BlockMaskingConfig]:
    """vanilla and memento (and restart) configs keyed by mode."""
    out = {
        "vanilla": BlockMaskingConfig.vanilla(mask_delimiters),
        "memento": BlockMaskingConfig.from_mode("memento", mask_delimiters, keep_last_n_blocks),
    }
    if restart:
        out["restart"] = BlockMaskingConfig.from_mode("restart", mask_delimiters, keep_last_n_blocks)
    return out


def account_trace(
    trace: Trace,
    tokens: MementoTokenIds,
    configs: Mapping[str, BlockMaskingConfig] | None = None,
    spec: KVSpec | str | None = None,
) -> dict[str, Occupancy]:
    """Occupancy of one trace, one per config label."""
    spec = resolve_spec(spec)
    configs = configs or default_configs()
    ids = np.asarray(trace.token_ids, dtype=np.int64)
    out = {}
    for label, cfg in configs.items():
        if not cfg.evicts:  # vanilla: nothing is ever evicted, occupancy is 1..n
            occ = np.arange(1, len(ids) + 1, dtype=np.int64)
        else:
            occ = schedule_occupancy(fast_schedule(ids, cfg, tokens, prompt_len=trace.prompt_len))
        out[label] = Occupancy(occ, spec.bytes_per_token, trace.prompt_len, trace.trace_id, label)
    return out


SUMMARY_COLUMNS = [
    "trace",
    "mode",
    "n_tokens",
    "prompt_len",
    "peak_tokens",
    "peak_gb",
    "auc_token_steps",
    "auc_gb_ktok",
]


def summary_row(c: Occupancy) -> dict[str, Any]:
    return {
        "trace": c.trace,
        "mode": c.mode,
        "n_tokens": len(c.tokens),
        "prompt_len": c.prompt_len,
        "peak_tokens": c.peak_tokens,
        "peak_gb": c.peak_gb,
        "auc_token_steps": c.auc_token_steps,
        "auc_gb_ktok": c.auc_gb_ktok,
    }


def summarize_curves(curves: Iterable[Occupancy]) -> pd.DataFrame:
    """One row per (trace, mode): n_tokens, prompt_len, peak_tokens, peak_gb, auc_token_steps, auc_gb_ktok."""
    return pd.DataFrame([summary_row(c) for c in curves], columns=SUMMARY_COLUMNS)


def kv_summary(
    traces: Iterable[Trace],
    tokens: MementoTokenIds,
    configs: Mapping[str, BlockMaskingConfig] | None = None,
    spec: KVSpec | str | None = None,
) -> pd.DataFrame:
    """Peak and AUC per trace and mode (tidy), see :func:`summarize_curves`."""
    spec = resolve_spec(spec)
    rows = []
    for t in traces:  # streamed: only the summary rows are kept, not the per-step curves
        rows.extend(summary_row(c) for c in account_trace(t, tokens, configs, spec).values())
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def reduction_table(summary: pd.DataFrame, baseline: str = "vanilla") -> pd.DataFrame:
    """Per mode: mean peak/AUC and the reduction factor against ``baseline`` (mean of per-trace ratios)."""
    base = summary[summary["mode"] == baseline].set_index("trace")
    rows = []
    for mode, g in summary.groupby("mode", sort=False):
        g = g.set_index("trace")
        common = g.index.intersection(base.index)
        peak_x = (base.loc[common, "peak_tokens"] / g.loc[common, "peak_tokens"]).mean() if len(common) else np.nan
        auc_x = (
            (
                base.loc[common, "auc_token_steps"]
                / g.loc[common, "auc_token_steps"].where(g.loc[common, "auc_token_steps"] > 0)
            ).mean()
            if len(common)
            else np.nan
        )
        rows.append(
            {
                "mode": mode,
                "traces": len(g),
                "mean_peak_gb": g["peak_gb"].mean(),
                "mean_auc_gb_ktok": g["auc_gb_ktok"].mean(),
                f"peak_reduction_vs_{baseline}": peak_x,
                f"auc_reduction_vs_{baseline}": auc_x,
            }
        )
    return pd.DataFrame(rows)


def with_vanilla_overlay(occ: pd.DataFrame) -> pd.DataFrame:
    """``occupancy.parquet`` rows of one trace plus a ``vanilla`` curve when the run recorded only evicting modes.

    Vanilla attention keeps every token (:meth:`Occupancy.vanilla`: after step s it holds ``s + 1`` tokens),
    at the run's own bytes per token. Recorded vanilla rows are kept as they are (then ``occ`` itself is
    returned).
    """
    if occ.empty or (occ["mode"] == "vanilla").any():
        return occ
    recorded = occupancies_from_table(occ[occ["mode"] == occ["mode"].iloc[0]], {})[0]
    van = occupancy_table([Occupancy.vanilla(len(recorded.tokens), recorded.bytes_per_token, trace=recorded.trace)])
    for col in occ.columns:
        if col not in van.columns:
            van[col] = occ[col].iloc[0]
    return pd.concat([occ, van[occ.columns]], ignore_index=True)
