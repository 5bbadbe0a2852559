"""The one writer of run contents: the per-trace contract tables, and runs written in resumable parts.

:func:`trace_tables` builds the four per-trace tables (generation, replay and ingestion all use it);
:class:`RunWriter` writes a producer's traces part by part (``parts/NNNNN/``, traces last as the commit
marker, the captured K/V and attention in shards beside them) and merges the parts on :meth:`RunWriter.finish`.
All files go through :class:`~.store.RunStore` (atomic, checksummed); all tables through :mod:`.schema`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import schema
from .kv import CaptureSink
from .store import RunStore

RUN_TABLES = tuple(t.name for t in schema.TRACE_TABLES)


def trace_tables(
    trace: Any,
    schedule: Any,
    tokens: Any,
    mode: str,
    source: str,
    bytes_per_token: int,
    tokenizer: Any = None,
    token_strings: Sequence[str] | None = None,
    trace_columns: dict[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """The four per-trace tables of the run contract (the one builder: generation, replay and ingestion).

    Args:
        token_strings: ``[n_tokens]`` display strings (default: the tokenizer's, else the ids).
        trace_columns: extra columns for the ``traces`` row (e.g. ``domain`` of ingested traces).
    """
    return frame_columns(
        [
            trace_table_columns(
                trace, schedule, tokens, mode, source, bytes_per_token, tokenizer, token_strings, trace_columns
            )
        ]
    )


def trace_table_columns(
    trace: Any,
    schedule: Any,
    tokens: Any,
    mode: str,
    source: str,
    bytes_per_token: int,
    tokenizer: Any = None,
    token_strings: Sequence[str] | None = None,
    trace_columns: dict[str, Any] | None = None,
    occupancy: bool = True,
) -> dict[str, dict[str, Any]]:
    """The columns of :func:`trace_tables` as plain arrays/lists (no DataFrame): many traces' columns are
    concatenated and framed once by :func:`frame_columns` (per-trace frames cost most of a bulk write)."""
    from ..occupancy import schedule_occupancy
    from ..trace import assign_roles

    roles = assign_roles(schedule, trace.token_ids, tokens)
    n = len(trace.token_ids)
    if token_strings is not None:
        names = list(token_strings)
    elif tokenizer is not None:
        names = tokenizer.convert_ids_to_tokens(list(trace.token_ids))
    else:
        names = [str(t) for t in trace.token_ids]
    tid = trace.trace_id
    tok = {
        "trace": [tid] * n,
        "pos": np.arange(n, dtype=np.int64),
        "token_id": np.asarray(trace.token_ids, dtype=np.int64),
        "token": [str(x) for x in names],
        "role": roles.role,  # Role values (str), an object array
        "block": roles.block.astype(np.int64),
    }
    ev = [
        {
            "trace": tid,
            "kind": e.kind.value,
            "position": e.position,
            "start": e.start,
            "end": e.end,
            "block": e.block if e.block is not None else -1,
            "rewind_to": e.rewind_to,
            "message": e.message,
        }
        for e in schedule.events
    ]
    tr = [
        {
            "trace": tid,
            "n_tokens": n,
            "prompt_len": trace.prompt_len,
            "n_blocks": len(schedule.blocks),
            "mode": mode,
            "source": source,
            **(trace_columns or {}),
        }
    ]
    if not occupancy:  # a caller that accounts occupancy itself (ingest: vanilla + its config)
        return {"traces": tr, "tokens": tok, "events": ev}
    occ = np.asarray(schedule_occupancy(schedule))
    oc = {
        "trace": np.full(n, tid, dtype=object),
        "mode": np.full(n, mode, dtype=object),
        "step": np.arange(n, dtype=np.int64),
        "tokens": occ,
        "bytes": occ * bytes_per_token,
    }
    return {"traces": tr, "tokens": tok, "events": ev, "occupancy": oc}


def frame_columns(
    parts: Sequence[dict[str, Any]], names: Sequence[str] = ("traces", "tokens", "events", "occupancy")
) -> dict[str, pd.DataFrame]:
    """Several traces' :func:`trace_table_columns` as one DataFrame per table (schema order and dtypes).

    Row tables (traces, events) are lists of dicts; per-token tables (tokens, occupancy) dicts of arrays.
    """
    out = {}
    for name in names:
        table = schema.TABLES[name]
        cols = [p[name] for p in parts]
        if name in ("traces", "events"):
            out[name] = table.frame([row for rows in cols for row in rows])
        elif not cols or not sum(len(c["trace"]) for c in cols):
            out[name] = table.empty()
        else:
            out[name] = table.frame(pd.DataFrame({k: _concat([c[k] for c in cols]) for k in cols[0]}))
    return out


def _concat(pieces: Sequence[Any]) -> Any:
    """Lists stay one list (pandas infers their string dtype as for one trace); arrays concatenate."""
    if isinstance(pieces[0], list):
        return list(itertools.chain.from_iterable(pieces))
    return np.concatenate(pieces)


def write_capture_part(store: RunStore, part: int, sink: CaptureSink) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write a sink's K/V and attention as part ``part``'s shards; return that part's kv and attention index rows."""
    import torch

    kv_rows, attn_rows = [], []
    if sink.kv:
        shard = schema.KV_SHARD.at(part=part)
        tensors: dict[str, torch.Tensor] = {}
        for i, item in enumerate(sink.kv.values()):
            kn, vn = f"k{i}", f"v{i}"
            tensors[kn], tensors[vn] = item.keys, item.values
            k = item.key
            kv_rows.append(
                {
                    "trace": k.trace,
                    "variant": k.variant,
                    "layer": k.layer,
                    "block": k.block,
                    "start": item.start,
                    "end": item.end,
                    "shard": shard,
                    "key": kn,
                    "value": vn,
                }
            )
        store.write_tensors(shard, tensors)
    if sink.attention:
        shard = schema.ATTN_SHARD.at(part=part)
        tensors = {}
        for i, item in enumerate(sink.attention.values()):
            name = f"a{i}"
            tensors[name] = item.weights
            attn_rows.append(
                {
                    "trace": item.trace,
                    "variant": item.variant,
                    "layer": item.layer,
                    "query_pos": item.query_pos,
                    "shard": shard,
                    "tensor": name,
                }
            )
        store.write_tensors(shard, tensors)
    return schema.KV_INDEX.frame(kv_rows), schema.ATTN_INDEX.frame(attn_rows)


class RunWriter:
    """Writes a run in parts so an interrupted run keeps its finished traces.

    Each part ``NNNNN`` writes its shards, then ``parts/NNNNN/{tokens,events,occupancy,kv_index,attn_index}``,
    and last ``parts/NNNNN/traces.parquet`` (the commit marker). :meth:`finish` merges the parts into the
    top-level tables of the contract and marks the run complete.
    """

    def __init__(self, store: RunStore):
        self.store = store

    def done_traces(self) -> set[str]:
        done: set[str] = set()
        for rel in self._parts("traces"):
            done |= set(self.store.read_table(rel)["trace"])
        return done

    def _parts(self, table: str) -> list[str]:
        files = self.store.manifest.files
        marks = sorted(r for r in files if r.startswith(schema.PARTS_DIR) and r.endswith("/" + schema.TRACES.part_path))
        return [m.rsplit("/", 1)[0] + f"/{table}.parquet" for m in marks]

    def next_part(self) -> int:
        files = self.store.manifest.files
        nums = [int(r.split("/")[1]) for r in files if r.startswith(schema.PARTS_DIR)]
        shards = (schema.KV_SHARD.pattern(), schema.ATTN_SHARD.pattern())
        nums += [int(Path(r).stem.split("-")[1]) for r in files if any(p.match(r) for p in shards)]
        return max(nums, default=-1) + 1

    def write_part(
        self, tables: Sequence[dict[str, pd.DataFrame]], sink: CaptureSink | None, part: int | None = None
    ) -> int:
        """Write one part (``part``: its number, default the next free one; a sharded run numbers parts by
        work unit so the merged tables keep the input's trace order whatever finishes first)."""
        part = self.next_part() if part is None else part
        kv_idx, attn_idx = write_capture_part(self.store, part, sink) if sink is not None else (None, None)
        base = schema.part_dir(part)
        for t in schema.PART_TABLES:  # traces last: the part's commit marker
            if t in (schema.KV_INDEX, schema.ATTN_INDEX):
                df = kv_idx if t is schema.KV_INDEX else attn_idx
                if df is None:
                    continue
            else:
                frames = [x[t.name] for x in tables if len(x[t.name])]
                df = pd.concat(frames, ignore_index=True) if frames else tables[0][t.name].iloc[:0]
            self.store.write_table(f"{base}/{t.part_path}", df)
        if sink is not None:
            sink.clear()
        return part

    def merge(self) -> None:
        """Merge the committed parts into the run's top-level tables (the run stays as complete as it was)."""
        for t in schema.PART_TABLES:
            frames = [self.store.read_table(r) for r in self._parts(t.part) if r in self.store.manifest.files]
            frames = [f for f in frames if len(f)]
            if frames:
                self.store.write_table(t, pd.concat(frames, ignore_index=True))

    def finish(self, **info: Any) -> None:
        """Merge the parts and mark the run complete (an overwrite's new run is swapped in here)."""
        self.merge()
        self.store.mark_complete(**info)


__all__ = ["RUN_TABLES", "trace_tables", "trace_table_columns", "frame_columns", "write_capture_part", "RunWriter"]
