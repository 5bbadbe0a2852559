"""The app's one data-access interface: read-only views of run directories (no streamlit here).

Everything the pages show comes through :class:`RunData`, which reads the files of the run-directory
contract (docs/ARCHITECTURE.md) through :class:`~memento_lens.runtime.store.RunStore`. Files are
checksum-verified lazily, the first time each is read (a 100 MB run opens instantly; a corrupt file is
reported, naming it, when a page needs it). Per-trace reads use Parquet row filters and single-tensor
safetensors reads, so the cost of one interaction does not grow with the number of traces.

Captured K/V are looked up by the runtime's typed :class:`~memento_lens.runtime.kvstore.KVKey`. The app does
not use ``KVReader`` itself: that reader indexes every trace of a run up front (about 2.5 s for 1,000
traces on 2 cores) and needs a complete run, while the app answers one trace at a time, from unfinished
captures too.

Errors are :class:`~memento_lens.runtime.store.RunError` (or its subclass ``CorruptFile``) with one
line naming the file at fault; the UI shows them, never a traceback.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from memento_lens.runtime.kvstore import KVKey
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.store import MANIFEST, STATUS_COMPLETE, CorruptFile, RunError, RunStore

__all__ = ["RunData", "RunRef", "RunSummary", "KVKey", "discover_runs", "manifest_fingerprint", "ENV_RUNS"]

ENV_RUNS = "MEMENTO_LENS_RUNS"  # os.pathsep-separated run directories; set by `memento-lens app`
TRACES = schema.TRACES.path
TOKENS = schema.TOKENS.path
EVENTS = schema.EVENTS.path
OCCUPANCY = schema.OCCUPANCY.path
KV_INDEX = schema.KV_INDEX.path
ATTENTION_INDEX = schema.ATTN_INDEX.path
PROBES = schema.PROBE_RESULTS.path
ABLATIONS = schema.ABLATIONS.path
FIGURES = schema.FIGURES_DIR
PASSCODE_SUMMARY = "passcode_summary.json"


@dataclass(frozen=True)
class RunRef:
    """A run directory the user named (or found one level below a named folder); ``error`` if unusable."""

    path: str
    error: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """What the Runs page lists about one run."""

    path: str
    kind: str
    status: str
    created: str
    model: str
    masking: dict[str, Any]
    n_traces: int | None
    n_tokens: int | None
    total_bytes: int
    kv_bytes: int
    n_files: int
    has: dict[str, bool] = field(default_factory=dict)
    category_mb: dict[str, float] = field(default_factory=dict)


def manifest_fingerprint(path: str | Path) -> str:
    """sha256 of ``manifest.json`` (it holds every file's checksum, so it fingerprints the whole run).

    Raises RunError when the directory or its manifest is missing.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    try:
        return hashlib.sha256(mpath.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise RunError(f"{mpath}: missing; {path} is not a memento-lens run") from None


def discover_runs(paths: Iterable[str | Path]) -> list[RunRef]:
    """The runs among the directories the user named: each named directory that holds a manifest, or
    else its immediate subdirectories that do. Nothing outside the named directories is read."""
    refs: list[RunRef] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if (p / MANIFEST).is_file():
            refs.append(RunRef(str(p.resolve())))
            continue
        if not p.is_dir():
            refs.append(RunRef(str(p), f"{p}: no such run directory"))
            continue
        found = sorted(c for c in p.iterdir() if c.is_dir() and (c / MANIFEST).is_file())
        if not found:
            refs.append(
                RunRef(str(p), f"{p}: not a memento-lens run (no {MANIFEST}, and no run directories inside it)")
            )
        refs += [RunRef(str(c.resolve())) for c in found]
    seen: set[str] = set()
    return [r for r in refs if not (r.path in seen or seen.add(r.path))]


def _find_key(obj: Any, keys: tuple[str, ...]) -> Any:
    """First value under any of ``keys`` in a nested dict (breadth first)."""
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for k in keys:
                if k in cur and not isinstance(cur[k], dict):
                    return cur[k]
            queue += [v for v in cur.values() if isinstance(v, dict)]
    return None


def _find_masking(obj: Any) -> dict[str, Any]:
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            if "mask_delimiters" in cur and "keep_last_n_blocks" in cur:
                return dict(cur)
            queue += [v for v in cur.values() if isinstance(v, dict)]
    return {}


def _category_mb(files: dict[str, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for rel, f in files.items():
        head = rel.split("/", 1)[0]
        cat = head if head in ("kv", "attention", "figures") else ("tables" if rel.endswith(".parquet") else "other")
        out[cat] = out.get(cat, 0.0) + f["bytes"] / 1e6
    return out


# table -> its name inside an unfinished capture's parts/NNNNN/ (runtime/rundir/schema.py)
_PART_NAMES = {t.path: t.part for t in schema.PART_TABLES}


class RunData:
    """Read-only access to one run directory. Cheap to create; reads on demand; thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fingerprint = manifest_fingerprint(self.path)
        self.store = RunStore.open(self.path, verify=False)
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    # -- basics --------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.store.manifest.status == STATUS_COMPLETE

    def has(self, rel: str) -> bool:
        """Whether the run holds ``rel`` (for an unfinished capture: in one of its committed parts)."""
        return self.store.has(rel) or bool(self._parts(rel))

    def files(self, prefix: str = "") -> list[str]:
        return sorted(r for r in self.store.manifest.files if r.startswith(prefix))

    def verify(self, rel: str) -> Path:
        """Check ``rel`` is part of the run and intact (once per RunData); return its full path."""
        if rel not in self._verified:
            self.store.verify_file(rel)
            with self._lock:
                self._verified.add(rel)
        return self.path / rel

    def verify_all(self) -> list[str]:
        """Verify every recorded file; return the error lines (empty when the run is intact)."""
        errors = []
        for rel in self.files():
            try:
                self.verify(rel)
            except RunError as exc:
                errors.append(str(exc))
        return errors

    def incomplete_message(self) -> str | None:
        if self.complete:
            return None
        return (
            f"{self.path}: run is incomplete (interrupted, or still being written); only the files already "
            "written are shown. Resume it with --resume to finish it."
        )

    def _require(self, rel: str, what: str) -> Path:
        if rel not in self.store.manifest.files:
            hint = " (the run is incomplete)" if not self.complete else ""
            raise RunError(f"{self.path / rel}: missing{hint}; this run has no {what}")
        return self.verify(rel)

    def _parts(self, rel: str) -> list[str]:
        """An unfinished capture keeps its tables in ``parts/NNNNN/`` (``traces.parquet`` last, as the
        commit marker) until it merges them: the committed parts that hold ``rel``'s rows."""
        name = _PART_NAMES.get(rel)
        if name is None or self.complete:
            return []
        files = self.store.manifest.files
        marks = sorted(r for r in files if r.startswith("parts/") and r.endswith("/traces.parquet"))
        return [p for p in (m.rsplit("/", 1)[0] + f"/{name}.parquet" for m in marks) if p in files]

    def _read(self, rel: str, what: str, filters: list | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        import pyarrow.parquet as pq

        parts = [] if rel in self.store.manifest.files else self._parts(rel)
        frames = []
        for f in parts or [rel]:
            full = self._require(f, what)
            try:
                frames.append(pq.read_table(full, filters=filters, columns=columns).to_pandas())
            except Exception as exc:  # pyarrow raises several types for damaged files
                raise CorruptFile(f"{full}: unreadable Parquet ({exc})") from None
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if rel in schema.BY_PATH:
            df = schema.BY_PATH[rel].check(df, self.path / rel, columns)
        return df

    # -- summary -------------------------------------------------------------------------------
    def summary(self) -> RunSummary:
        m = self.store.manifest
        files = m.files
        model = (
            _find_key(m.info, ("model", "model_name", "model_path", "model_spec"))
            or _find_key(m.config, ("model", "model_name", "model_path", "model_spec"))
            or _find_key(m.config, ("model_type",))
            or "?"
        )

        def rows(rel: str) -> int | None:
            rels = [rel] if rel in files else self._parts(rel)
            try:
                import pyarrow.parquet as pq

                return sum(pq.ParquetFile(self.path / r).metadata.num_rows for r in rels) if rels else None
            except Exception:  # counted lazily; a damaged file is reported when a page reads it
                return None

        has = {
            "traces": self.has(TRACES),
            "tokens": self.has(TOKENS),
            "events": self.has(EVENTS),
            "occupancy": self.has(OCCUPANCY),
            "kv": self.has(KV_INDEX),
            "attention": self.has(ATTENTION_INDEX),
            "probes": self.has(PROBES),
            "ablations": self.has(ABLATIONS),
            "figures": any(r.startswith(FIGURES) for r in files),
        }
        return RunSummary(
            path=str(self.path),
            kind=m.kind,
            status=m.status,
            created=m.created,
            model=str(model),
            masking=_find_masking(m.config),
            n_traces=rows(TRACES),
            n_tokens=rows(TOKENS),
            total_bytes=int(sum(f["bytes"] for f in files.values())),
            kv_bytes=int(sum(f["bytes"] for r, f in files.items() if r.startswith("kv/"))),
            n_files=len(files),
            has=has,
            category_mb=_category_mb(files),
        )

    # -- traces --------------------------------------------------------------------------------
    def traces(self) -> pd.DataFrame:
        return self._read(TRACES, "trace table")

    def tokens(self, trace: str) -> pd.DataFrame:
        df = self._read(TOKENS, "tokens", filters=[("trace", "==", trace)]).sort_values("pos")
        if df.empty:
            raise RunError(f"{self.path / TOKENS}: no tokens for trace {trace!r}")
        return df.reset_index(drop=True)

    def events(self, trace: str) -> pd.DataFrame:
        df = self._read(EVENTS, "eviction events", filters=[("trace", "==", trace)])
        return df.sort_values("position").reset_index(drop=True)

    def occupancy(self, trace: str) -> pd.DataFrame:
        df = self._read(OCCUPANCY, "KV occupancy", filters=[("trace", "==", trace)])
        return df.sort_values(["mode", "step"]).reset_index(drop=True)

    # -- KV ------------------------------------------------------------------------------------
    def kv_index(self, trace: str | None = None) -> pd.DataFrame:
        filters = [("trace", "==", trace)] if trace is not None else None
        return self._read(KV_INDEX, "captured KV (kv/index.parquet)", filters=filters)

    def residue_traces(self) -> list[str]:
        """Traces with at least one memento captured in both the normal and the restart variant."""
        idx = self._read(KV_INDEX, "captured KV (kv/index.parquet)", columns=["trace", "variant", "layer", "block"])
        idx = idx[idx["variant"].isin(["normal", "restart"])]
        both = idx.groupby(["trace", "layer", "block"])["variant"].nunique()
        return sorted(both[both == 2].reset_index()["trace"].astype(str).unique().tolist())

    def _tensor(self, shard: str, name: str):
        full = self.verify(shard)
        try:
            from safetensors import safe_open

            with safe_open(str(full), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as exc:
            raise CorruptFile(f"{full}: cannot read tensor {name!r} ({exc})") from None

    def kv(self, key: KVKey, index: pd.DataFrame | None = None):
        """``(keys, values, (start, end))`` of one captured KV entry; tensors ``[1, kv_heads, end-start, d]``."""
        idx = index if index is not None else self.kv_index(key.trace)
        row = idx[
            (idx["trace"] == key.trace)
            & (idx["layer"] == key.layer)
            & (idx["variant"] == key.variant)
            & (idx["block"] == key.block)
        ]
        if row.empty:
            raise RunError(
                f"{self.path / KV_INDEX}: no {key.variant} KV for trace {key.trace!r} layer {key.layer} "
                f"block {key.block}"
            )
        r = row.iloc[0]
        return (
            self._tensor(r["shard"], r["key"]),
            self._tensor(r["shard"], r["value"]),
            (int(r["start"]), int(r["end"])),
        )

    def kv_many(
        self, keys: list[KVKey], index: pd.DataFrame | None = None
    ) -> dict[KVKey, tuple[Any, Any, tuple[int, int]]]:
        """Several KV entries at once, opening each shard once: ``{key: (keys, values, (start, end))}``.

        Keys that were not captured are left out.
        """
        if not keys:
            return {}
        traces = {k.trace for k in keys}
        idx = index if index is not None else pd.concat([self.kv_index(t) for t in sorted(traces)])
        want = {(k.trace, k.layer, k.variant, k.block): k for k in keys}
        rows = [r for r in idx.itertuples(index=False) if (r.trace, int(r.layer), r.variant, int(r.block)) in want]
        out: dict[KVKey, tuple[Any, Any, tuple[int, int]]] = {}
        from safetensors import safe_open

        for shard in sorted({r.shard for r in rows}):
            full = self.verify(shard)
            try:
                with safe_open(str(full), framework="pt") as f:
                    for r in rows:
                        if r.shard == shard:
                            k = want[(r.trace, int(r.layer), r.variant, int(r.block))]
                            out[k] = (f.get_tensor(r.key), f.get_tensor(r.value), (int(r.start), int(r.end)))
            except Exception as exc:
                raise CorruptFile(f"{full}: cannot read tensors ({exc})") from None
        return out

    # -- attention -----------------------------------------------------------------------------
    def attention_traces(self) -> list[str]:
        """Traces with captured attention (reads only the ``trace`` column of the index)."""
        idx = self._read(ATTENTION_INDEX, "captured attention (attention/index.parquet)", columns=["trace"])
        return sorted(idx["trace"].astype(str).unique().tolist())

    def attention_index(self, trace: str | None = None) -> pd.DataFrame:
        filters = [("trace", "==", trace)] if trace is not None else None
        return self._read(ATTENTION_INDEX, "captured attention (attention/index.parquet)", filters=filters)

    def attention(self, trace: str, variant: str, layer: int, query_pos: int) -> np.ndarray | None:
        """``[heads, n_keys]`` float32 attention row of one query, or None when not captured."""
        idx = self.attention_index(trace)
        row = idx[(idx["variant"] == variant) & (idx["layer"] == layer) & (idx["query_pos"] == query_pos)]
        if row.empty:
            return None
        t = self._tensor(row.iloc[0]["shard"], row.iloc[0]["tensor"])
        return t.reshape(-1, t.shape[-1]).float().numpy()

    # -- downstream tables ---------------------------------------------------------------------
    def probe_results(self) -> pd.DataFrame:
        return self._read(PROBES, "probe results (run `memento-lens probe` on it)")

    def ablations(self) -> pd.DataFrame:
        return self._read(ABLATIONS, "ablation results (run the restart ablation / patching on it)")

    def chance(self) -> float | None:
        """Chance accuracy of the probed label, if the run records one (manifest info/config ``chance``, or
        ``passcode_summary.json``)."""
        c = _find_key(self.store.manifest.info, ("chance", "chance_accuracy")) or _find_key(
            self.store.manifest.config, ("chance", "chance_accuracy")
        )
        if c is None and PASSCODE_SUMMARY in self.store.manifest.files:  # written by `probe passcode`
            try:
                c = _find_key(self.store.read_json(PASSCODE_SUMMARY), ("chance",))
            except RunError:
                c = None
        try:
            return float(c) if c is not None else None
        except (TypeError, ValueError):
            return None

    def figures(self) -> dict[str, list[str]]:
        """``{figure name: [relative paths]}`` of ``figures/*`` recorded in the manifest."""
        out: dict[str, list[str]] = {}
        for rel in self.files(FIGURES):
            out.setdefault(Path(rel).stem, []).append(rel)
        return out

    def unrecorded_figures(self) -> dict[str, list[str]]:
        """Files in ``figures/`` that the manifest does not list (written around the run store, or dropped
        from the manifest by a writer holding a stale copy): ``{figure name: [relative paths]}``."""
        root = self.path / FIGURES
        if not root.is_dir():
            return {}
        recorded = set(self.store.manifest.files)
        out: dict[str, list[str]] = {}
        for f in sorted(root.iterdir()):
            rel = f"{FIGURES}{f.name}"
            if f.is_file() and not f.is_symlink() and not f.name.startswith(".") and rel not in recorded:
                out.setdefault(f.stem, []).append(rel)
        return out

    def read_unrecorded(self, rel: str) -> bytes:
        """Bytes of an unrecorded ``figures/`` file (no checksum to verify it against)."""
        if rel not in {r for rels in self.unrecorded_figures().values() for r in rels}:
            raise RunError(f"{self.path / rel}: not an unrecorded figure of this run")
        return (self.path / rel).read_bytes()

    def read_bytes(self, rel: str) -> bytes:
        return self._require(rel, rel).read_bytes()
