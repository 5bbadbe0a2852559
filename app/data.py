"""The app's one data-access interface: read-only views of run directories (no streamlit here).

Everything the pages show comes through :class:`RunData`, a thin app-side view over the runtime's one
reader, :class:`~memento_lens.runtime.rundir.reader.RunReader` (which owns the parts layout, the schema
checks and the K/V lookup by :class:`~memento_lens.runtime.rundir.kv.KVKey`). Files are checksum-verified
lazily, the first time each is read (a 100 MB run opens instantly; a corrupt file is reported, naming it,
when a page needs it). Per-trace reads use Parquet row filters and single-tensor safetensors reads, so the
cost of one interaction does not grow with the number of traces; unfinished captures are read from their
committed parts. This module adds only what the pages need on top: discovery, the summary, the figures list.

Errors are :class:`~memento_lens.runtime.rundir.store.RunError` (or its subclass ``CorruptFile``) with one
line naming the file at fault; the UI shows them, never a traceback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
from memento_lens.analyses.attention import Pattern, head_mass_summary, query_key_pattern
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.kv import KVKey
from memento_lens.runtime.rundir.reader import RunReader
from memento_lens.runtime.rundir.store import MANIFEST, RunError

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
PASSCODE_SUMMARY = schema.PASSCODE_SUMMARY.path


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


class RunData:
    """Read-only access to one run directory. Cheap to create; reads on demand; thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fingerprint = manifest_fingerprint(self.path)
        self.reader = RunReader(self.path)
        self.store = self.reader.store

    # -- basics --------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.reader.complete

    def has(self, rel: str) -> bool:
        """Whether the run holds ``rel`` (for an unfinished capture: in one of its committed parts)."""
        return self.reader.has(rel)

    def files(self, prefix: str = "") -> list[str]:
        return self.reader.files(prefix)

    def verify(self, rel: str) -> Path:
        """Check ``rel`` is part of the run and intact (once per RunData); return its full path."""
        return self.reader.verify(rel)

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
        how = (
            "Resume it with the same command and --resume to finish it."
            if self.store.manifest.kind in ("generate", "replay")
            else "Re-run the command that wrote it (with --overwrite) to finish it."
        )
        return (
            f"{self.path}: run is incomplete (interrupted, or still being written); only the files already "
            f"written are shown. {how}"
        )

    def _parts(self, rel: str) -> list[str]:
        return self.reader.parts(rel) if rel in schema.BY_PATH else []

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
        return self.reader.table(TRACES, what="trace table")

    def tokens(self, trace: str) -> pd.DataFrame:
        """``tokens.parquet`` rows of one trace by position, plus ``text``: each token's decoded text
        (byte-level BPE / SentencePiece markers decoded, :func:`memento_lens.app.compute.decode_token`)."""
        from .compute import decode_token

        df = self.reader.table(TOKENS, trace=trace, what="tokens").sort_values("pos")
        if df.empty:
            raise RunError(f"{self.path / TOKENS}: no tokens for trace {trace!r}")
        df = df.reset_index(drop=True)
        df["text"] = [decode_token(t) for t in df["token"].astype(str)]
        return df

    def events(self, trace: str) -> pd.DataFrame:
        df = self.reader.table(EVENTS, trace=trace, what="eviction events")
        return df.sort_values("position").reset_index(drop=True)

    def occupancy(self, trace: str) -> pd.DataFrame:
        df = self.reader.table(OCCUPANCY, trace=trace, what="KV occupancy")
        return df.sort_values(["mode", "step"]).reset_index(drop=True)

    # -- KV ------------------------------------------------------------------------------------
    def kv_index(self, trace: str | None = None) -> pd.DataFrame:
        return self.reader.table(KV_INDEX, trace=trace, what="captured KV (kv/index.parquet)")

    def residue_traces(self) -> list[str]:
        """Traces with at least one memento captured in both the normal and the restart variant."""
        idx = self.reader.table(
            KV_INDEX, columns=["trace", "variant", "layer", "block"], what="captured KV (kv/index.parquet)"
        )
        idx = idx[idx["variant"].isin(["normal", "restart"])]
        both = idx.groupby(["trace", "layer", "block"])["variant"].nunique()
        return sorted(both[both == 2].reset_index()["trace"].astype(str).unique().tolist())

    def kv(self, key: KVKey, index: pd.DataFrame | None = None):
        """``(keys, values, (start, end))`` of one captured KV entry; tensors ``[1, kv_heads, end-start, d]``."""
        return tuple(self.reader.kv(key, index))

    def kv_many(
        self, keys: list[KVKey], index: pd.DataFrame | None = None
    ) -> dict[KVKey, tuple[Any, Any, tuple[int, int]]]:
        """Several KV entries at once, opening each shard once: ``{key: (keys, values, (start, end))}``.

        Keys that were not captured are left out.
        """
        return {k: tuple(e) for k, e in self.reader.kv_many(keys, index).items()}

    # -- attention -----------------------------------------------------------------------------
    def attention_traces(self) -> list[str]:
        """Traces with captured attention (reads only the ``trace`` column of the index)."""
        idx = self.reader.table(ATTENTION_INDEX, columns=["trace"], what="captured attention (attention/index.parquet)")
        return sorted(idx["trace"].astype(str).unique().tolist())

    def attention_index(self, trace: str | None = None) -> pd.DataFrame:
        return self.reader.table(ATTENTION_INDEX, trace=trace, what="captured attention (attention/index.parquet)")

    def visible(self, trace: str, query_pos: int, n_tokens: int | None = None) -> np.ndarray:
        """``[n_tokens]`` bool: the positions query ``query_pos`` sees, by the runtime's one visibility rule
        applied to this run's events (:func:`memento_lens.runtime.masks.visible_at`)."""
        from memento_lens.runtime.masks import events_from_table, visible_at

        n = len(self.tokens(trace)) if n_tokens is None else n_tokens
        return visible_at(events_from_table(self.events(trace)), int(query_pos), n)

    def visibility(self, trace: str) -> Callable[[int], np.ndarray]:
        """``visible(q) -> [n_tokens] bool`` for one trace (events read once; rows memoised)."""
        from memento_lens.runtime.masks import events_from_table, evicted_at

        evs = events_from_table(self.events(trace))
        n = len(self.tokens(trace))
        # What is hidden changes only where an event starts hiding its range (masks.hides: from effective_from
        # on), so the rule is asked once per such epoch; visible_at = causal minus evicted_at, as in masks.
        starts = np.unique([e.effective_from for e in evs if e.end > e.start])
        gone: dict[int, np.ndarray] = {}
        memo: dict[int, np.ndarray] = {}
        pos = np.arange(n)

        def visible(q: int) -> np.ndarray:
            q = int(q)
            if q not in memo:
                epoch = int(np.searchsorted(starts, q, side="right"))
                if epoch not in gone:
                    gone[epoch] = evicted_at(evs, q, n)
                memo[q] = (pos <= q) & ~gone[epoch]
            return memo[q]

        return visible

    def attention_rows(
        self, trace: str, variant: str, layer: int, visible: Callable[[int], np.ndarray] | None = None
    ) -> "AttentionRows":
        """The captured rows of one (trace, variant, layer) as a lazy ``{query: [heads, n_tokens]}`` mapping."""
        idx = self.attention_index(trace)
        sel = idx[(idx["variant"] == variant) & (idx["layer"] == layer)]
        where = {int(q): (str(sh), str(t)) for q, sh, t in zip(sel["query_pos"], sel["shard"], sel["tensor"])}
        return AttentionRows(self, trace, variant, layer, where, visible or self.visibility(trace))

    def attention_pattern(
        self,
        trace: str,
        variant: str,
        layer: int,
        q_edges: tuple[int, ...],
        k_edges: tuple[int, ...],
        max_queries: int | None = None,
    ) -> Pattern:
        """Query x key :class:`~memento_lens.analyses.attention.Pattern` (all heads) of one captured layer on
        the given row / column position edges (:func:`~memento_lens.analyses.attention.query_edges`, ``edges``);
        ``max_queries``: use at most that many of the window's captured queries, evenly spaced."""
        vis = self.visibility(trace)
        rows = self.attention_rows(trace, variant, layer, vis)
        rows = rows.sample(q_edges[0], q_edges[-1], max_queries)
        return query_key_pattern(rows, vis, np.asarray(q_edges), np.asarray(k_edges))

    def head_summary(
        self, trace: str, variant: str, queries: tuple[int, int], max_queries: int | None = None
    ) -> pd.DataFrame:
        """Per (layer, head) mass by role over the captured queries in ``[q_lo, q_hi)`` (analyses); at most
        ``max_queries`` of them per layer, evenly spaced."""
        toks = self.tokens(trace)
        vis = self.visibility(trace)
        idx = self.attention_index(trace)
        layers = sorted(int(x) for x in idx.loc[idx["variant"] == variant, "layer"].unique())
        rows = _LayerRows(
            {li: self.attention_rows(trace, variant, li, vis).sample(*queries, max_queries) for li in layers}, queries
        )
        return head_mass_summary(rows, toks["role"].astype(str).to_numpy(), toks["block"].to_numpy(), vis)

    def attention(self, trace: str, variant: str, layer: int, query_pos: int) -> np.ndarray | None:
        """``[heads, n_tokens]`` float32 attention row of one query over every position (0 where not
        visible), or None when not captured. Decodes compact (visible keys, float16) and older full-length
        float32 tensors alike (:func:`memento_lens.runtime.capture.expand_attention`)."""
        rows = self.attention_rows(trace, variant, layer)
        return rows[query_pos] if query_pos in rows else None

    # -- downstream tables ---------------------------------------------------------------------
    def probe_results(self) -> pd.DataFrame:
        return self.reader.table(PROBES, what="probe results (run `memento-lens probe` on it)")

    def ablations(self) -> pd.DataFrame:
        return self.reader.table(ABLATIONS, what="ablation results (run the restart ablation / patching on it)")

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
        if rel not in self.store.manifest.files:
            raise RunError(f"{self.path / rel}: missing; this run has no {rel}")
        return self.reader.bytes(rel)


class AttentionRows(Mapping):
    """Captured attention rows of one (trace, variant, layer), decoded on access: ``rows[q]`` is
    ``[heads, n_tokens]`` float32 over every position (:func:`memento_lens.runtime.capture.expand_attention`).
    Lazy, so a pattern over thousands of queries never holds them all."""

    def __init__(self, run: RunData, trace: str, variant: str, layer: int, where: dict, visible: Callable):
        self.run, self.trace, self.variant, self.layer = run, trace, variant, layer
        self._where, self._visible = where, visible

    def __getitem__(self, q: int) -> np.ndarray:
        from memento_lens.runtime.capture import expand_attention

        shard, name = self._where[int(q)]
        t = self.run.reader.tensor(shard, name, schema.ATTN_INDEX)
        try:
            return expand_attention(t, self._visible(q))
        except ValueError as exc:
            raise RunError(
                f"{self.run.path / shard}: tensor {name!r} (trace {self.trace!r}, {self.variant} layer {self.layer}, "
                f"query {q}) {exc}"
            ) from None

    def sample(self, lo: int, hi: int, most: int | None) -> "AttentionRows":
        """These rows limited to at most ``most`` of the captured queries in ``[lo, hi)``, evenly spaced (all
        when ``most`` is None or not exceeded)."""
        inside = [q for q in sorted(self._where) if lo <= q < hi]
        if most is None or len(inside) <= most:
            return self
        keep = [inside[i] for i in np.unique(np.linspace(0, len(inside) - 1, most).round().astype(int))]
        where = {q: self._where[q] for q in keep}
        return AttentionRows(self.run, self.trace, self.variant, self.layer, where, self._visible)

    def window(self, qs, heads: int, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        """``[len(qs), heads, hi - lo]`` float32 weights of queries ``qs`` on keys ``[lo, hi)``, scattered straight
        from the stored tensors (compact or full length) without expanding each row over the whole trace.
        ``out``: a buffer of at least that shape to reuse (zeroed here)."""
        import torch

        if out is None or out.shape[0] < len(qs) or out.shape[1:] != (heads, hi - lo):
            out = np.zeros((len(qs), heads, hi - lo), dtype=np.float32)
        else:
            out = out[: len(qs)]
            out.fill(0.0)
        for i, q in enumerate(qs):
            shard, name = self._where[int(q)]
            t = self.run.reader.tensor(shard, name, schema.ATTN_INDEX)
            if t.dtype not in (torch.float16, torch.float32):  # numpy has no bfloat16
                t = t.float()
            w = t.reshape(-1, t.shape[-1]).numpy()
            vis = self._visible(q)
            pos = np.arange(len(vis)) if w.shape[-1] == len(vis) else np.flatnonzero(vis)
            if len(pos) != w.shape[-1]:
                self[q]  # raises the RunError naming the file and tensor
            a, b = np.searchsorted(pos, lo), np.searchsorted(pos, hi)
            out[i, :, pos[a:b] - lo] = w[:, a:b].T
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._where))

    def __len__(self) -> int:
        return len(self._where)


class _LayerRows(Mapping):
    """``{(layer, q): row}`` over several layers' :class:`AttentionRows`, queries limited to ``[lo, hi)``."""

    def __init__(self, layers: dict[int, AttentionRows], queries: tuple[int, int]):
        self._layers = layers
        lo, hi = queries
        self._keys = [(li, q) for li, rows in layers.items() for q in rows if lo <= q < hi]

    def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
        return self._layers[key[0]][key[1]]

    def layer_window(self, layer: int, qs, heads: int, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        return self._layers[layer].window(qs, heads, lo, hi, out)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
