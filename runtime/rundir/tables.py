"""Domain objects <-> run tables: an :class:`~memento_lens.runtime.occupancy.Occupancy` as ``occupancy.parquet``
rows and back. The run directory depends on the domain types, never the other way round (``runtime.occupancy``
imports nothing of ``rundir``)."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ..occupancy import Occupancy
from . import schema


def occupancy_table(occupancies: Iterable[Occupancy]) -> pd.DataFrame:
    """The run directory's ``occupancy.parquet`` rows (trace, mode, step, tokens, bytes) of each occupancy."""
    occs = list(occupancies)
    if not occs:
        return schema.OCCUPANCY.frame(None)
    lens = [len(o.tokens) for o in occs]
    # one frame from concatenated columns: a frame per occupancy cost most of a bulk ingest's time
    df = pd.DataFrame(
        {
            "trace": np.repeat(np.array([o.trace for o in occs], dtype=object), lens),
            "mode": np.repeat(np.array([o.mode for o in occs], dtype=object), lens),
            "step": np.concatenate([np.arange(n, dtype=np.int64) for n in lens]),
            "tokens": np.concatenate([o.tokens.astype(np.int64) for o in occs]),
            "bytes": np.concatenate([o.bytes for o in occs]),
        }
    )
    return schema.OCCUPANCY.frame(df)


def table_bytes_per_token(table: pd.DataFrame) -> int | None:
    """The bytes per cached token an ``occupancy.parquet`` table was written with (its ``bytes`` / ``tokens``;
    None when it holds no occupied step)."""
    toks = table["tokens"].to_numpy(np.int64)
    nz = toks > 0
    return int(table["bytes"].to_numpy()[nz][0] // toks[nz][0]) if nz.any() else None


def occupancies_from_table(
    table: pd.DataFrame, prompt_lens: Mapping[str, int], bytes_per_token: int | None = None
) -> list[Occupancy]:
    """Occupancies back from an ``occupancy.parquet`` table (bytes/token from its ``bytes`` column unless given)."""
    out = []
    for (trace, mode), g in table.sort_values("step").groupby(["trace", "mode"], sort=False):
        toks = g["tokens"].to_numpy(np.int64)
        bpt = bytes_per_token if bytes_per_token is not None else (table_bytes_per_token(g) or 0)
        out.append(Occupancy(toks, bpt, int(prompt_lens.get(trace, 0)), str(trace), str(mode)))
    return out


__all__ = ["occupancy_table", "occupancies_from_table", "table_bytes_per_token"]
