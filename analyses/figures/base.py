"""What every figure shares: the inputs it reads, the two-method base class, Markdown tables."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from memento_lens.runtime.config import MementoTokenIds
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.reader import RunReader
from memento_lens.runtime.trace import Trace

from ..kv import KVSpec

PASSCODE_CHANCE = schema.PASSCODE_CHANCE  # owned by the run schema (one of 10 digits per passcode position)


class MissingInputs(Exception):
    """A figure's inputs are absent; the message is the reason shown in the report."""


@dataclass
class FigureInputs:
    """Everything figures may read.

    Attributes:
        runs: run directories, read through :class:`RunReader` (checksums verified on read).
        traces: ingested traces (from trace files).
        token_ids: the memento token ids of ``traces`` (their tokenizer's).
        spec: bytes per token for KV figures.
        trace_id: which trace the per-trace figures (kv-sawtooth) show; None = the first one.
    """

    runs: Sequence[RunReader] = ()
    traces: Sequence[Trace] = ()
    token_ids: MementoTokenIds | None = None
    spec: KVSpec | None = None
    trace_id: str | None = None
    _cache: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    def table(self, table: schema.Table | str) -> pd.DataFrame | None:
        """A run table (``schema.PROBE_RESULTS``, or its path) concatenated over every run that has it, with a
        ``run`` column (the run directory's name); None when no run has it."""
        t = schema.table(table) if isinstance(table, str) else table
        if t.name not in self._cache:
            parts = [r.table(t).assign(run=r.path.name) for r in self.runs if r.has(t)]
            self._cache[t.name] = pd.concat(parts, ignore_index=True) if parts else None
        return self._cache[t.name]


class Figure:
    """One paper figure. Subclasses set ``name``/``title``/``paper`` and implement :meth:`data` and :meth:`plot`.

    ``data`` returns exactly the numbers ``plot`` draws (written as the CSV) or raises
    :class:`MissingInputs`; ``markdown`` renders the table(s) for papers (default: the data itself).
    """

    name: str = ""
    title: str = ""
    paper: str = ""

    def data(self, inputs: FigureInputs) -> pd.DataFrame:
        raise NotImplementedError

    def plot(self, df: pd.DataFrame) -> Any:
        raise NotImplementedError

    def markdown(self, df: pd.DataFrame) -> str:
        return f"## {self.title}\n\n{self.paper}\n\n{md_table(df)}\n"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def md_table(df: pd.DataFrame, max_rows: int = 200) -> str:
    """A GitHub Markdown table (floats to 4 significant digits); longer tables are cut with a note."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.head(max_rows).itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n_{len(df) - max_rows} more rows in the CSV._")
    return "\n".join(lines)


def checkpoint_order(values: Sequence[Any]) -> list[str]:
    """Checkpoints in training order: by the last integer in the name (``step-1000``), then by name."""

    def key(v: Any):
        nums = re.findall(r"\d+", str(v))
        return (int(nums[-1]) if nums else math.inf, str(v))

    return sorted({str(v) for v in values}, key=key)


def normalize_models(df: pd.DataFrame) -> pd.DataFrame:
    """``toy@step-100`` → model ``toy``, checkpoint ``step-100`` (when the checkpoint column is empty), so one
    model's checkpoints group together."""
    model = df["model"].astype(str)
    split = model.str.split("@", n=1)
    base = split.str[0]
    suffix = split.map(lambda parts: parts[1] if len(parts) > 1 else "")
    ck = df["checkpoint"].astype(str).fillna("") if "checkpoint" in df else pd.Series("", index=df.index)
    ck = ck.where(~ck.isin(["", "nan", "None", "<NA>"]), suffix)
    return df.assign(model=base, checkpoint=ck)


def all_head_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows about every KV head at once (``head == ALL_HEADS``) when the table has any, else ``df``: per-head
    rows are detail that a by-layer or by-checkpoint view would otherwise average in."""
    if "head" in df.columns and (df["head"] == schema.ALL_HEADS).any():
        return df[df["head"] == schema.ALL_HEADS]
    return df


def mean_over_seeds(df: pd.DataFrame, by: list[str], value: str = "accuracy") -> pd.DataFrame:
    """Mean accuracy and mean CI bounds over seeds (and any other unlisted column), with the count."""
    cols = {value: (value, "mean"), "n_seeds": (value, "size")}
    for c in ("ci_low", "ci_high"):
        if c in df:
            cols[c] = (c, "mean")
    return df.groupby(by, sort=True, dropna=False).agg(**cols).reset_index()


def layer_dtick(layers: pd.Series) -> int:
    """Integer tick spacing for a layer axis: every layer up to 12 of them, then about 12 ticks."""
    span = int(layers.max() - layers.min()) + 1 if len(layers) else 1
    return max(1, math.ceil(span / 12))
