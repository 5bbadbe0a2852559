"""The one reader of run directories: whole tables, one trace, an unfinished run's committed parts, K/V by key.

Everything that reads a run (the app, figures, probes, benchmarks, a notebook) goes through
:class:`RunReader`; the parts layout and the K/V index lookup live only here. Files are checksum-verified
lazily, once each, the first time they are read, so opening a large run is instant and a damaged file is
reported (naming it) when something needs it. Per-trace reads are Parquet row filters; tensors are read one
at a time from memory-mapped safetensors shards.

Example::

    run = RunReader("runs/toy")
    tokens = run.table(TOKENS, trace="toy-00000")
    k, v, (start, end) = run.kv(KVKey("toy-00000", layer=3, variant="normal", block=2))  # [1, kv_heads, n, d]
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from ..occupancy import DTYPE_BYTES, KVSpec
from . import schema
from .kv import KVKey
from .schema import ATTN_INDEX, KV_INDEX, Table
from .store import STATUS_COMPLETE, CorruptFile, RunError, RunStore, check_relative, committed_parts, read_table
from .tables import table_bytes_per_token


@dataclass(frozen=True)
class KVEntry:
    """One captured K/V span: ``keys``/``values`` ``[1, kv_heads, end-start, d_head]`` over positions ``[start, end)``."""

    keys: Any
    values: Any
    start: int
    end: int

    def __iter__(self):  # (keys, values, (start, end)), as the app unpacks it
        return iter((self.keys, self.values, (self.start, self.end)))


class RunReader:
    """Read-only access to one run directory. Cheap to create; reads on demand; thread-safe.

    Args:
        run: a run directory or an open :class:`RunStore`.
        require_complete: refuse an incomplete run (by default its committed parts are read).
    """

    def __init__(self, run: str | os.PathLike | RunStore, *, require_complete: bool = False):
        self.store = run if isinstance(run, RunStore) else RunStore.open(run, verify=False)
        if require_complete and not self.complete:
            raise RunError(
                f"{self.store.path}: run is incomplete (interrupted?); finish it by re-running the command that wrote it"
            )
        self._verified: set[str] = set()
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def manifest(self):
        return self.store.manifest

    @property
    def complete(self) -> bool:
        return self.store.manifest.status == STATUS_COMPLETE

    @property
    def model(self) -> dict[str, Any] | None:
        """The model that produced the run's numbers (``manifest.model``; runs written before it: the config's
        ``model_info`` plus ``model`` name), or None when the run records none (e.g. an ingest)."""
        m = self.store.manifest
        if m.model is not None:
            return dict(m.model)
        info = m.config.get("model_info")
        if isinstance(info, dict):
            return {"name": m.config.get("model"), **info}
        return None

    @property
    def chance(self) -> float | None:
        """Chance accuracy of the probed label (``manifest.chance``; runs written before it: the passcode
        summary's ``chance``), or None when the run records none."""
        if self.store.manifest.chance is not None:
            return self.store.manifest.chance
        if schema.PASSCODE_SUMMARY.path in self.store.manifest.files:
            c = self.json(schema.PASSCODE_SUMMARY.path).get("summary", {}).get("chance")
            return float(c) if c is not None else None
        return None

    def bytes_per_token(self) -> tuple[int, str] | None:
        """The run's own bytes per cached token and where it comes from: the manifest's model, else the
        ``occupancy.parquet`` it wrote (bytes / tokens); None when it records neither. The one rule every
        KV figure and command applies to a run unless the user names another model."""
        model = self.model
        if model and model.get("bytes_per_token"):
            return int(model["bytes_per_token"]), f"{model.get('name') or 'model'} (the run's own model)"
        if self.has(schema.OCCUPANCY):
            bpt = table_bytes_per_token(self.table(schema.OCCUPANCY, columns=["tokens", "bytes"]))
            if bpt:
                return bpt, "the bytes the run's occupancy.parquet recorded"
        return None

    def kv_spec(self) -> KVSpec | None:
        """The run's own :class:`KVSpec` (what one cached token costs in the model that produced it), from
        :meth:`bytes_per_token`; its geometry from the manifest's model where recorded. None when the run records
        neither a model nor occupancy bytes."""
        found = self.bytes_per_token()
        if found is None:
            return None
        bpt, source = found
        model = self.model or {}
        layers, kv_heads = int(model.get("layers") or 0), int(model.get("kv_heads") or 0)
        dtype_bytes = DTYPE_BYTES.get(str(model.get("dtype", "")), 0)
        if layers and kv_heads and dtype_bytes and bpt % (2 * layers * kv_heads * dtype_bytes) == 0:
            return KVSpec(source, layers, kv_heads, bpt // (2 * layers * kv_heads * dtype_bytes), dtype_bytes)
        return KVSpec(source, 1, 1, bpt // 2, 1)  # only the byte count is known: 2 x 1 x 1 x bpt/2 x 1

    def feature_sets(self) -> list[str]:
        """Prefixes of the cached passcode feature sets in the run (``features``, ``features/<checkpoint>``)."""
        return schema.feature_sets(self.store.manifest.files)

    def files(self, prefix: str = "") -> list[str]:
        """Recorded files (run-relative paths) under ``prefix``."""
        return sorted(r for r in self.store.manifest.files if r.startswith(prefix))

    def verify(self, rel: str) -> Path:
        """Check ``rel`` is a recorded file inside the run with its checksum intact (once); its full path."""
        if rel not in self._verified:
            full = self.store.verify_file(rel)
            with self._lock:
                self._verified.add(rel)
            return full
        return self.store.file(rel)

    # -- tables --------------------------------------------------------------------------------
    def parts(self, table: Table | str) -> list[str]:
        """The committed parts (``parts/NNNNN/<part>.parquet``) holding ``table``'s rows in an unfinished run;
        empty for a complete run (its parts were merged) or a table never written in parts."""
        return committed_parts(self.store, schema.table(table) if isinstance(table, str) else table)

    def has(self, table: Table | str) -> bool:
        """Whether the run holds ``table`` (a Table, its name or any recorded path), merged or in parts."""
        if isinstance(table, str) and table not in schema.TABLES and table not in schema.BY_PATH:
            return table in self.store.manifest.files
        t = schema.table(table) if isinstance(table, str) else table
        return t.path in self.store.manifest.files or bool(self.parts(t))

    def table(
        self,
        table: Table | str,
        *,
        trace: str | None = None,
        traces: Iterable[str] | None = None,
        columns: Sequence[str] | None = None,
        what: str | None = None,
    ) -> pd.DataFrame:
        """Rows of ``table`` (all, one ``trace``, or several ``traces``), checked against its schema; ``table`` may
        also be any recorded Parquet path (e.g. a feature index). An unfinished run's committed parts are read.

        Raises RunError naming the file when the run lacks the table (``what`` says what it holds).
        """
        return read_table(self.store, table, trace=trace, traces=traces, columns=columns, what=what, verify=self.verify)

    def json(self, rel: str) -> Any:
        return self.store.read_json(rel)

    def bytes(self, rel: str) -> bytes:
        return self.verify(rel).read_bytes()

    # -- K/V -----------------------------------------------------------------------------------
    def kv_index(self, trace: str | None = None, traces: Iterable[str] | None = None) -> pd.DataFrame:
        """``kv/index.parquet`` rows (of one trace / several); empty when nothing was captured."""
        if not self.has(KV_INDEX):
            return KV_INDEX.empty()
        return self.table(KV_INDEX, trace=trace, traces=traces, what="captured KV (kv/index.parquet)")

    def tensor(self, shard: str, name: str, index: Table = KV_INDEX) -> Any:
        """One tensor of a shard named by ``index`` (path checked to lie inside the run; checksum once)."""
        from safetensors import safe_open

        handle = self._handles.get(shard)
        if handle is None:
            check_relative(shard, self.path / index.path)
            full = self.verify(shard)
            try:
                handle = safe_open(str(full), framework="pt", device="cpu")
            except Exception as exc:
                raise CorruptFile(f"{full}: unreadable safetensors ({exc})") from None
            with self._lock:
                self._handles[shard] = handle
        try:
            return handle.get_tensor(name)
        except Exception as exc:
            raise CorruptFile(f"{self.path / shard}: cannot read tensor {name!r} ({exc})") from None

    def kv(self, key: KVKey, index: pd.DataFrame | None = None) -> KVEntry:
        """The K/V captured under ``key``; RunError naming the index when it was not captured."""
        idx = index if index is not None else self.kv_index(key.trace)
        row = idx[
            (idx["trace"] == key.trace)
            & (idx["layer"] == key.layer)
            & (idx["variant"] == key.variant)
            & (idx["block"] == key.block)
        ]
        if row.empty:
            raise RunError(
                f"{self.path / KV_INDEX.path}: no {key.variant} KV for trace {key.trace!r} layer {key.layer} "
                f"block {key.block}"
            )
        r = row.iloc[0]
        return KVEntry(
            self.tensor(r["shard"], r["key"]), self.tensor(r["shard"], r["value"]), int(r["start"]), int(r["end"])
        )

    def kv_many(self, keys: Sequence[KVKey], index: pd.DataFrame | None = None) -> dict[KVKey, KVEntry]:
        """Several K/V entries at once (each shard opened once); keys not captured are left out."""
        if not keys:
            return {}
        idx = index if index is not None else self.kv_index(traces={k.trace for k in keys})
        want = {(k.trace, k.layer, k.variant, k.block): k for k in keys}
        out: dict[KVKey, KVEntry] = {}
        for r in idx.itertuples(index=False):
            k = want.get((r.trace, int(r.layer), r.variant, int(r.block)))
            if k is not None and k not in out:
                out[k] = KVEntry(self.tensor(r.shard, r.key), self.tensor(r.shard, r.value), int(r.start), int(r.end))
        return out

    # -- attention -----------------------------------------------------------------------------
    def attention_index(self, trace: str | None = None) -> pd.DataFrame:
        return self.table(ATTN_INDEX, trace=trace, what="captured attention (attention/index.parquet)")

    def attention(self, trace: str, variant: str, layer: int, query_pos: int) -> Any | None:
        """``[1, heads, n_keys]`` attention weights of one captured query, or None when not captured."""
        if not self.has(ATTN_INDEX):
            return None
        idx = self.attention_index(trace)
        row = idx[(idx["variant"] == variant) & (idx["layer"] == layer) & (idx["query_pos"] == query_pos)]
        if row.empty:
            return None
        return self.tensor(row.iloc[0]["shard"], row.iloc[0]["tensor"], ATTN_INDEX)


def open_run(path: str | os.PathLike, *, require_complete: bool = False) -> RunReader:
    """Open a run directory for reading (see :class:`RunReader`)."""
    return RunReader(path, require_complete=require_complete)


class KVReader:
    """Captured K/V of a complete run, indexed up front by :class:`KVKey` (for bulk reads; built on RunReader).

    Example::

        kv = KVReader("runs/toy")
        k, v = kv.get(KVKey("toy-00000", layer=3, variant="normal", block=2))   # [1, kv_heads, n, d]
    """

    def __init__(
        self, run: str | os.PathLike | RunStore | RunReader, device: str = "cpu", traces: Iterable[str] | None = None
    ):
        """Args:
        traces: index only these traces.
        """
        self.reader = run if isinstance(run, RunReader) else RunReader(run, require_complete=True)
        self.store = self.reader.store
        self.device = device
        index = self.reader.kv_index(traces=traces) if traces is not None else self.reader.kv_index()
        self.index = index.reset_index(drop=True)
        self._rows: dict[KVKey, int] = {}
        for i, (t, layer, variant, block) in enumerate(
            zip(index["trace"].tolist(), index["layer"].tolist(), index["variant"].tolist(), index["block"].tolist())
        ):
            key = object.__new__(KVKey)  # index rows were validated when written
            object.__setattr__(key, "trace", t)
            object.__setattr__(key, "layer", int(layer))
            object.__setattr__(key, "variant", variant)
            object.__setattr__(key, "block", int(block))
            self._rows[key] = i
        self._cols = {c: index[c].tolist() for c in ("start", "end", "shard", "key", "value")}

    def __contains__(self, key: KVKey) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self):
        return iter(self._rows)

    def span(self, key: KVKey) -> tuple[int, int]:
        """Positions ``[start, end)`` the tensors cover."""
        i = self._row(key)
        return int(self._cols["start"][i]), int(self._cols["end"][i])

    def get(self, key: KVKey):
        """``(keys, values)``, each ``[1, kv_heads, end-start, d_head]`` (keys post-RoPE, as cached)."""
        i = self._row(key)
        shard = self._cols["shard"][i]
        k, v = self.reader.tensor(shard, self._cols["key"][i]), self.reader.tensor(shard, self._cols["value"][i])
        return (k, v) if self.device == "cpu" else (k.to(self.device), v.to(self.device))

    def _row(self, key: KVKey) -> int:
        try:
            return self._rows[key]
        except KeyError:
            raise KeyError(f"{self.store.path}: no captured K/V for {key}") from None

    def select(
        self,
        *,
        trace: str | None = None,
        layer: int | None = None,
        variant: str | None = None,
        block: int | None = None,
    ) -> list[KVKey]:
        """Every captured key matching the given fields (None = any), in index order."""
        return [
            k
            for k in self._rows
            if (trace is None or k.trace == trace)
            and (layer is None or k.layer == layer)
            and (variant is None or k.variant == variant)
            and (block is None or k.block == block)
        ]

    def attention(self, trace: str, variant: str, layer: int, query_pos: int):
        """``[1, heads, n_keys]`` attention weights of one captured query."""
        if not self.reader.has(ATTN_INDEX):
            raise KeyError(f"{self.store.path}: no attention weights were captured")
        w = self.reader.attention(trace, variant, layer, query_pos)
        if w is None:
            raise KeyError(
                f"{self.store.path}: no attention for trace {trace!r} {variant} layer {layer} query {query_pos}"
            )
        return w


__all__ = ["RunReader", "KVReader", "KVEntry", "open_run"]
