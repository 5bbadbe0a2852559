"""Trace files -> a run directory the app can show (traces, tokens, events, occupancy tables), with accounting.

Reading, tokenizing and validating trace files is the runtime's trace layer (:mod:`memento_lens.runtime.traces`,
:func:`~memento_lens.runtime.traces.load_traces`: one module per format, the chat template in one place); this
module streams what it reads into tables (:func:`write_run`, :func:`ingest_to_run`) and keeps the ingest report.

A malformed trace (bad row, or a stream the schedule warns about) is skipped and recorded in the
:class:`IngestReport` with its id and the offending position; ``strict=True`` raises :class:`IngestError`
instead. An ingest that keeps no trace is an error naming the file and the first reason, and writes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.errors import InputFileError, OptionError
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.traces import (  # noqa: F401  (re-exported: where ingest users look)
    APPROX_SPECIALS,
    CHECK,
    FORMATS,
    IngestError,
    IngestIssue,
    IngestReport,
    RawTrace,
    TextTokenizer,
    detect_format,
    load_tokenizer,
    load_traces,
    render_segments,
    segment_chars,
)
from memento_lens.runtime.validate import MAX_UNK_SHARE

from .kv import KVSpec, account_trace, default_configs, fast_schedule, occupancy_table, resolve_spec


@dataclass
class IngestResult:
    traces: list[Trace]
    report: IngestReport


def iter_ingest(
    path: str | Path,
    tokenizer: TextTokenizer | str | None = None,
    *,
    fmt: str | None = None,
    strict: bool = False,
    report: IngestReport | None = None,
    check: BlockMaskingConfig = CHECK,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
    progress: Any = None,
) -> Iterator[Trace]:
    """Stream the well-formed traces of one text trace file (:func:`load_traces`); skipped rows go into
    ``report`` (or raise under ``strict``).

    ``keep_text`` keeps the rendered prompt/response text in ``meta`` (``prompt_text``, ``response_text``)
    so :func:`write_run` can store readable token strings. ``arrays`` keeps ``token_ids`` as the int64 numpy
    array tokenization produced instead of a list (faster for bulk accounting; same values).
    """
    source = load_traces(
        path,
        tokenizer,
        format=fmt,
        strict=strict,
        report=report if report is not None else IngestReport(),
        check=check,
        keep_text=keep_text,
        arrays=arrays,
        max_unk_share=max_unk_share,
        progress=progress,
    )
    if FORMATS[source.format].tokenized:
        raise OptionError(
            f"{path}: {source.format} input holds token ids, not text; ingest, kv and stats tokenize text trace "
            "files (token ids go to replay --traces; kv and stats also read run directories)"
        )
    yield from source


def ingest_file(
    path: str | Path,
    tokenizer: TextTokenizer | str | None = None,
    *,
    fmt: str | None = None,
    strict: bool = False,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
) -> IngestResult:
    report = IngestReport()
    traces = list(
        iter_ingest(
            path,
            tokenizer,
            fmt=fmt,
            strict=strict,
            report=report,
            keep_text=keep_text,
            arrays=arrays,
            max_unk_share=max_unk_share,
        )
    )
    return IngestResult(traces, report)


def ingest_files(
    paths: Iterable[str | Path],
    tokenizer: TextTokenizer | str | None = None,
    *,
    fmt: str | None = None,
    strict: bool = False,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
    progress: Any = False,
) -> IngestResult:
    """Ingest several files with one tokenizer; trace ids are prefixed by the file stem when they collide."""
    report = IngestReport()
    traces = list(
        iter_ingest_files(
            paths,
            tokenizer,
            report,
            fmt=fmt,
            strict=strict,
            keep_text=keep_text,
            arrays=arrays,
            max_unk_share=max_unk_share,
            progress=progress,
        )
    )
    return IngestResult(traces, report)


def iter_ingest_files(
    paths: Iterable[str | Path],
    tokenizer: TextTokenizer | str | None,
    report: IngestReport,
    *,
    fmt: str | None = None,
    strict: bool = False,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
    progress: Any = False,
) -> Iterator[Trace]:
    """:func:`ingest_files` as a stream (one trace in memory at a time); skipped rows go into ``report``."""
    from memento_lens.runtime.progress import bar_for
    from memento_lens.runtime.traces import get_format

    tok = load_tokenizer(tokenizer)
    ids: set[str] = set()
    paths = [Path(p) for p in paths]
    total = 0
    if progress is True:  # one bar over every file's rows (unknown counts just show the rate)
        counts = [_count_rows(p, fmt, get_format) for p in paths]
        total = sum(c or 0 for c in counts) if all(c is not None for c in counts) else None
    bar = bar_for(progress, total, "ingest", "row")
    for p in paths:
        for t in iter_ingest(
            p,
            tok,
            fmt=fmt,
            strict=strict,
            report=report,
            keep_text=keep_text,
            arrays=arrays,
            max_unk_share=max_unk_share,
            progress=bar,
        ):
            if t.trace_id in ids:
                t = Trace(f"{Path(p).stem}/{t.trace_id}", t.token_ids, t.prompt_len, t.meta)
            ids.add(t.trace_id)
            yield t
    bar.close()


def _count_rows(path: Path, fmt: str | None, get_format: Any) -> int | None:
    """Rows of a trace file for the progress bar (None: unknown, or the reader will name the fault)."""
    try:
        return get_format(fmt or detect_format(path))(path).count() if path.is_file() else None
    except Exception:  # the reader reports a damaged file with its name; a count is only for the bar
        return None


def no_traces_error(report: IngestReport, what: str = "to ingest", after: str = "; nothing was written") -> IngestError:
    """The error for an input that kept no trace (``ingest``, ``kv``, ``stats``): the files and the first reason."""
    files = ", ".join(report.sources) or "input"
    if report.skipped:
        first = report.skipped[0]
        more = f" (and {report.n_skipped - 1} more skipped)" if report.n_skipped > 1 else ""
        why = f"every row was skipped; the first: {first}{more}"
    else:
        why = "the file holds no rows" if len(report.sources) <= 1 else "the files hold no rows"
    return IngestError(f"{files}: no traces {what} ({why}){after}")


def ingest_to_run(
    paths: Sequence[str | Path],
    out: str | Path,
    tokenizer: TextTokenizer | str | None = None,
    *,
    fmt: str | None = None,
    strict: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
    config: BlockMaskingConfig | None = None,
    spec: KVSpec | str | None = None,
    overwrite: bool = False,
    progress: Any = False,
    on_report: Any = None,
):
    """``ingest``: trace files -> a run directory, in two streaming passes (one trace in memory at a time): the
    input's fingerprint (part of the run's config, needed before the run is created), then the tables.

    Returns ``(store, report)``. ``on_report(report)`` is called after the first pass when it kept traces (the CLI
    prints it).

    Raises:
        IngestError: no trace kept (an empty file, a truncated one, every row skipped): names the file and the
            first reason; nothing is written.
    """
    tok = load_tokenizer(tokenizer)  # once for both passes

    def stream(report: IngestReport, show: Any, keep_text: bool):
        return iter_ingest_files(
            paths,
            tok,
            report,
            fmt=fmt,
            strict=strict,
            keep_text=keep_text,
            max_unk_share=max_unk_share,
            progress=show,
        )

    report = IngestReport()
    fingerprint = traces_fingerprint(stream(report, progress, keep_text=False))
    if fingerprint["n"] == 0:  # the error names the first reason and the count; no report printed before it
        raise no_traces_error(report)
    if on_report is not None:
        on_report(report)
    store = write_run(
        out,
        stream(IngestReport(), False, keep_text=True),
        tok,
        config=config,
        spec=spec,
        report=report,
        overwrite=overwrite,
        progress=progress,
        fingerprint=fingerprint,
    )
    return store, report


# -- run directory -----------------------------------------------------------------------------------


def read_run_traces(path: str | Path):
    """The traces of a complete run directory (any kind holding traces) and the memento token ids they were
    tokenized with: ``(traces, MementoTokenIds)``, through :func:`load_traces` (``token_ids`` as arrays)."""
    source = load_traces(path, format="run", arrays=True)
    return source.list(), source.tokens


def trace_tables(
    traces: Sequence[Trace], tokenizer: TextTokenizer, config: BlockMaskingConfig, on_trace: Any = None
) -> dict[str, pd.DataFrame]:
    """``traces``, ``tokens`` and ``events`` tables (run-directory contract) under ``config``, built by the
    runtime's one contract builder (occupancy comes from :func:`account_trace`, vanilla included)."""
    from memento_lens.runtime.rundir.writer import frame_columns

    parts = []
    for t in traces:
        if on_trace is not None:  # progress: the tables are most of an ingest's time
            on_trace(1)
        parts.append(_trace_columns(t, tokenizer, config))
    out = frame_columns(parts, ("traces", "tokens", "events"))
    if not parts:
        out["traces"] = out["traces"].assign(domain=pd.Series(dtype=object))
    return out


def _trace_columns(t: Trace, tokenizer: TextTokenizer, config: BlockMaskingConfig) -> dict[str, Any]:
    """One trace's contract columns (arrays, not frames: many traces are framed at once)."""
    from memento_lens.runtime.rundir.writer import trace_table_columns

    ids = np.asarray(t.token_ids, dtype=np.int64)
    sched = fast_schedule(ids, config, tokenizer.ids, prompt_len=t.prompt_len)
    source = str(t.meta.get("source_file", t.meta.get("format", "")))
    return trace_table_columns(
        t,
        sched,
        tokenizer.ids,
        config.mode,
        source,
        0,
        token_strings=_token_strings(t, ids, tokenizer),
        trace_columns={"domain": str(t.meta.get("domain", ""))},
        occupancy=False,
    )


def _token_strings(t: Trace, ids: np.ndarray, tok: TextTokenizer) -> list[str]:
    prompt, response = t.meta.get("prompt_text"), t.meta.get("response_text")
    if isinstance(prompt, str) and isinstance(response, str):
        out = tok.token_strings(prompt, ids[: t.prompt_len]) + tok.token_strings(response, ids[t.prompt_len :])
        if len(out) == len(ids):
            return out
    if not tok.name.startswith("approx"):
        return tok.token_strings("", ids)
    return [APPROX_SPECIALS[i] if i < len(APPROX_SPECIALS) else "·" for i in ids.tolist()]


class _Fingerprint:
    """Trace count and a sha256 of ids and tokens, fed one trace at a time."""

    def __init__(self) -> None:
        import hashlib

        self.h, self.n = hashlib.sha256(), 0

    def add(self, t: Trace) -> None:
        self.h.update(f"{t.trace_id}\0{t.prompt_len}\0".encode())
        self.h.update(np.asarray(t.token_ids, dtype=np.int64).tobytes())
        self.n += 1

    def result(self) -> dict[str, Any]:
        return {"n": self.n, "sha256": self.h.hexdigest()}


def _traces_fingerprint(traces: Iterable[Trace]) -> dict[str, Any]:
    """What identifies the ingested input in a run's config: trace count and a sha256 of ids and tokens.

    One streaming pass (a caller with a file to stream computes it first, then streams again into
    :func:`write_run`, which checks the second pass saw the same traces)."""
    fp = _Fingerprint()
    for t in traces:
        fp.add(t)
    return fp.result()


traces_fingerprint = _traces_fingerprint

# Rows of the per-token tables (tokens, occupancy x2 modes) held before a chunk is written as a row group.
WRITE_CHUNK_TOKENS = 1 << 17


def write_run(
    path: str | Path,
    traces: Iterable[Trace],
    tokenizer: TextTokenizer | str | None = None,
    *,
    config: BlockMaskingConfig | None = None,
    spec: KVSpec | str | None = None,
    report: IngestReport | None = None,
    overwrite: bool = False,
    progress: Any = False,
    fingerprint: dict[str, Any] | None = None,
    chunk_tokens: int = WRITE_CHUNK_TOKENS,
):
    """Write ingested traces as a run directory (kind ``ingest``): traces, tokens, events (under ``config``,
    default memento keep 0) and occupancy (vanilla + that config) tables, plus the ingest report.

    Streams: the per-token tables are written in row groups of about ``chunk_tokens`` tokens as traces
    arrive, so memory stays bounded. ``traces`` may be a one-pass iterable when ``fingerprint`` (from
    :func:`traces_fingerprint` over the same traces) is given; otherwise it must be a sequence.
    """
    from memento_lens.runtime.rundir import schema
    from memento_lens.runtime.rundir.store import RunStore
    from memento_lens.runtime.rundir.writer import frame_columns

    tok = load_tokenizer(tokenizer)
    spec = resolve_spec(spec)
    config = config or default_configs()["memento"]
    if fingerprint is None:
        traces = traces if isinstance(traces, Sequence) else list(traces)
        fingerprint = _traces_fingerprint(traces)
    store = RunStore.create(
        path,
        "ingest",
        {
            "masking": config.to_dict(),
            "tokenizer": tok.describe(),
            "kv_spec": asdict(spec),
            "traces": fingerprint,
        },
        overwrite=overwrite,
        can_resume=False,
    )
    if store.reused:
        return store
    from memento_lens.runtime.progress import bar_for

    bar = bar_for(progress, 2 * fingerprint["n"], "write run", "trace")  # tables, then KV accounting
    configs = {"vanilla": BlockMaskingConfig.vanilla(config.mask_delimiters), config.mode: config}
    trace_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    metas: dict[str, Any] = {}
    n_written = 0
    with store:  # a failed overwrite leaves the old run as it was
        with store.table_stream(schema.TOKENS) as tokens_out, store.table_stream(schema.OCCUPANCY) as occ_out:
            pending: list[dict[str, Any]] = []
            curves: list[Any] = []
            n_pending = 0

            def flush() -> None:
                tokens_out(frame_columns(pending, ("tokens",))["tokens"])
                occ_out(occupancy_table(curves))
                pending.clear()
                curves.clear()

            seen = _Fingerprint()
            for t in traces:
                seen.add(t)
                cols = _trace_columns(t, tok, config)
                bar.update(1)
                trace_rows += cols["traces"]
                event_rows += cols["events"]
                pending.append({"tokens": cols["tokens"]})
                curves += account_trace(t, tok.ids, configs, spec).values()
                bar.update(1)
                metas[t.trace_id] = {k: v for k, v in t.meta.items() if k not in ("prompt_text", "response_text")}
                n_pending += len(t.token_ids)
                n_written += 1
                if n_pending >= chunk_tokens:
                    flush()
                    n_pending = 0
            if pending:
                flush()
            if seen.result() != fingerprint:  # a streamed input changed between the two passes
                raise InputFileError(
                    f"{', '.join(sorted({str(m.get('source_file', '')) for m in metas.values()} - {''})) or 'input'}: "
                    f"traces changed while being ingested ({fingerprint['n']} traces when first read, "
                    f"{seen.n} when written); nothing was written"
                )
        bar.close()
        rows = frame_columns([{"traces": trace_rows, "events": event_rows}], ("traces", "events"))
        if not trace_rows:
            rows["traces"] = rows["traces"].assign(domain=pd.Series(dtype=object))
        store.write_table("traces.parquet", rows["traces"])
        store.write_table("events.parquet", rows["events"])
        store.write_json(schema.INGEST_REPORT.path, (report or IngestReport()).to_dict())
        store.write_json(schema.TRACES_META.path, metas)
        sources = sorted({str(m.get("source_file", "")) for m in metas.values()} - {""})
        store.mark_complete(
            n_traces=n_written,
            token_ids=tok.ids.to_dict(),
            sources=sources,
            # the KV spec the occupancy bytes were accounted with (no model ran on ingested traces)
            model={"name": f"ingested traces (KV accounted as {spec.name})", "bytes_per_token": spec.bytes_per_token},
        )
    return store
