"""Trace files → :class:`runtime.trace.Trace` (+ a run directory the app can show).

Formats (``detect_format`` picks one from the file name):

* ``openmementos`` — Parquet as published (``default`` config: problem, response, domain, source,
  difficulty; ``full`` adds sentences, blocks, block_summaries). ``response`` holds the special tokens
  inline; a row without a usable ``response`` is rendered from sentences/blocks/block_summaries.
* ``memento-json`` — the Memento JSON examples (``segments`` of type block/summary/answer, ``block_idx``
  1-based), one object, a list of them, or one per line; rendered as
  ``<think> (<|block_start|> block <|block_end|> <|summary_start|> memento <|summary_end|>)* </think> answer``.
* ``vllm-jsonl`` — one request per line: ``prompt``, the generated text with special tokens (``text``,
  ``generated_text``, ``output`` or ``outputs[0].text``), optional ``prompt_token_ids`` and
  ``token_ids`` (or ``outputs[0].token_ids``) used as-is with a real tokenizer.

Problems become the prompt as ChatML (``<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n``); the
prompt length is known, so blocks are tracked from the first generated token on. A malformed trace (bad
row, or a stream the schedule warns about) is skipped and recorded in the :class:`IngestReport` with its
id and the offending position; ``strict=True`` raises :class:`IngestError` instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from memento_lens.runtime.config import (
    BLOCK_END,
    BLOCK_START,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
    BlockMaskingConfig,
    ConfigError,
)
from memento_lens.runtime.errors import InputFileError
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.validate import MAX_UNK_SHARE, check_unk_share

from .kv import KVSpec, account_trace, default_configs, fast_schedule, occupancy_table, resolve_spec
from .tokenization import TextTokenizer, chatml_prompt, load_tokenizer

FORMATS = ("openmementos", "memento-json", "vllm-jsonl")
_PAIR = re.compile(
    re.escape(BLOCK_START)
    + "(.*?)"
    + re.escape(BLOCK_END)
    + r"\s*"
    + re.escape(SUMMARY_START)
    + "(.*?)"
    + re.escape(SUMMARY_END),
    re.S,
)
_DELIMS = re.compile("(" + "|".join(re.escape(t) for t in (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)) + ")")
_CHECK = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0, require_assistant_section=False)
# Structural tokens that must not appear literally inside a segment's text (they would open/close spans).
_STRUCTURAL = (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END, THINK_START, THINK_END)


class IngestError(InputFileError, ConfigError):
    """A malformed trace under ``strict``; the message names the file, trace and position."""


@dataclass(frozen=True)
class IngestIssue:
    """One skipped (or warned-about) trace.

    Attributes:
        source: file it came from.
        trace: trace id (row id when the row had none).
        position: offending token index in prompt+response (None when the row could not be tokenized).
        message: what is wrong.
    """

    source: str
    trace: str
    position: int | None
    message: str

    def __str__(self) -> str:
        where = f" at token {self.position}" if self.position is not None else ""
        return f"{self.source}: trace {self.trace}{where}: {self.message}"


@dataclass
class IngestReport:
    """What ingestion did: rows read, traces kept, and every skipped row with its reason."""

    sources: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_ingested: int = 0
    skipped: list[IngestIssue] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def merge(self, other: "IngestReport") -> "IngestReport":
        return IngestReport(
            self.sources + other.sources,
            self.n_rows + other.n_rows,
            self.n_ingested + other.n_ingested,
            self.skipped + other.skipped,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "n_rows": self.n_rows,
            "n_ingested": self.n_ingested,
            "n_skipped": self.n_skipped,
            "skipped": [asdict(i) for i in self.skipped],
        }


@dataclass
class IngestResult:
    traces: list[Trace]
    report: IngestReport


@dataclass
class RawTrace:
    """One row before tokenization (prompt + response text, or ids from vLLM)."""

    trace_id: str
    prompt: str
    response: str
    meta: dict[str, Any]
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    # The bare problem when the prompt was built from one: re-rendered in a real tokenizer's chat template.
    problem: str | None = None


_END = object()  # end of a stream (a reader's lookahead)


class _RowError(Exception):
    def __init__(self, trace: str, message: str, position: int | None = None):
        super().__init__(message)
        self.trace, self.message, self.position = trace, message, position


def segment_chars(response: str) -> tuple[list[int], list[int]]:
    """Character lengths of each block's content and of its memento, from the inline special tokens.

    Pairs ``<|block_start|> block <|block_end|> (whitespace) <|summary_start|> memento <|summary_end|>``;
    anything else (nested or unfinished blocks) is not counted.
    """
    parts = _DELIMS.split(response)  # text, delimiter, text, delimiter, ...: delimiters at odd indices
    blocks, mementos = [], []
    i = 1
    while i + 6 < len(parts):
        if (
            parts[i] == BLOCK_START
            and parts[i + 2] == BLOCK_END
            and not parts[i + 3].strip()
            and parts[i + 4] == SUMMARY_START
            and parts[i + 6] == SUMMARY_END
        ):
            blocks.append(len(parts[i + 1]))
            mementos.append(len(parts[i + 5]))
            i += 8
        else:
            i += 2
    return blocks, mementos


def render_segments(blocks: Sequence[str], mementos: Sequence[str], answer: str | None) -> str:
    body = "".join(f"{BLOCK_START}{b}{BLOCK_END}{SUMMARY_START}{m}{SUMMARY_END}" for b, m in zip(blocks, mementos))
    return f"{THINK_START}{body}{THINK_END}{answer or ''}"


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "openmementos"
    if name.endswith(".jsonl"):
        # A JSONL of Memento JSON objects is recognised by its first line.
        with open(path, "rb") as f:
            first_raw = next((ln for ln in f if ln.strip()), b"")
        try:
            first = first_raw.decode("utf-8")
        except UnicodeDecodeError:
            return "vllm-jsonl"  # the reader names the file and byte offset
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            return "vllm-jsonl"
        return "memento-json" if isinstance(obj, dict) and "segments" in obj else "vllm-jsonl"
    if name.endswith(".json"):
        return "memento-json"
    raise ConfigError(f"{path}: unknown trace file type (expected .parquet, .json or .jsonl); pass --format")


# -- readers: yield RawTrace or _RowError, never raise for one bad row ---------------------------------


def _read_openmementos(path: Path, batch_size: int = 512) -> Iterator[RawTrace | _RowError]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ConfigError(f"{path}: unreadable Parquet ({exc})") from None
    names = set(pf.schema_arrow.names)
    wanted = [
        c
        for c in (
            "id",
            "task_id",
            "problem",
            "response",
            "domain",
            "source",
            "difficulty",
            "sentences",
            "blocks",
            "block_summaries",
        )
        if c in names
    ]
    if "response" not in names and not {"sentences", "blocks", "block_summaries"} <= names:
        raise ConfigError(
            f"{path}: not an OpenMementos file (needs a `response` column, or sentences/blocks/"
            f"block_summaries; has {', '.join(sorted(names))})"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
        for rec in batch.to_pylist():
            tid = str(rec.get("id") or rec.get("task_id") or f"{path.stem}:{row}")
            row += 1
            try:
                yield _openmementos_row(tid, rec)
            except _RowError as exc:
                yield exc


def _openmementos_row(tid: str, rec: Mapping[str, Any]) -> RawTrace:
    problem = rec.get("problem")
    if not isinstance(problem, str):
        problem = ""
    response = rec.get("response")
    meta = {k: rec.get(k) for k in ("domain", "source", "difficulty") if rec.get(k) is not None}
    if not isinstance(response, str) or not response:
        sentences, blocks, summaries = rec.get("sentences"), rec.get("blocks"), rec.get("block_summaries")
        if not (isinstance(sentences, list) and isinstance(blocks, list) and isinstance(summaries, list)):
            raise _RowError(tid, "no `response` text and no sentences/blocks/block_summaries to render one from")
        if len(blocks) != len(summaries):
            raise _RowError(tid, f"{len(blocks)} blocks but {len(summaries)} block_summaries")
        texts = []
        for i, idx in enumerate(blocks):
            try:
                lo, hi = min(idx), max(idx)  # a block is a contiguous run of sentences ([first, last] or all)
                texts.append(" ".join(sentences[lo : hi + 1]))
            except (TypeError, ValueError):
                raise _RowError(tid, f"block {i}: bad sentence indices {idx!r}") from None
        for i, text in enumerate(texts):
            _no_literal_delimiters(tid, f"block {i}", text)
        for i, text in enumerate(summaries):
            _no_literal_delimiters(tid, f"block_summaries[{i}]", str(text))
        response = render_segments(texts, [str(s) for s in summaries], None)
    meta["format"] = "openmementos"
    return RawTrace(tid, chatml_prompt(problem), response, meta, problem=problem)


def _no_literal_delimiters(tid: str, where: str, text: str) -> None:
    """Segment text holding a structural token literally would change the block structure once rendered."""
    for tok in _STRUCTURAL:
        at = text.find(tok)
        if at >= 0:
            raise _RowError(tid, f"{where}: text holds the literal token {tok} at character {at}")


def _json_objects(path: Path) -> list[Any]:
    from memento_lens.runtime.validate import read_text

    text = read_text(path, "trace file")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        out = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    out.append(_RowError(f"{path.stem}:{i}", f"line {i + 1}: invalid JSON ({exc.msg})"))
        return out


def _iter_json_objects(path: Path) -> Iterator[Any]:
    """:func:`_json_objects` as a stream for JSON-lines files (one line in memory at a time).

    The same items in the same order, lines split as ``str.splitlines`` does, the same UTF-8 error (file and
    byte offset). A file whose first non-blank line is not a JSON value on its own, or is a list (one JSON
    document: pretty-printed, or a list of objects), is read whole by :func:`_json_objects`.
    """
    from memento_lens.runtime.validate import utf8_error

    try:
        f = open(path, "rb")
    except OSError:
        yield from _json_objects(path)  # names the file and the reason
        return
    with f:
        started, i, offset = False, -1, 0
        for raw in f:
            try:
                chunk = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise utf8_error(path, exc, offset) from None
            offset += len(raw)
            for line in chunk.splitlines():
                i += 1
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    if not started:
                        break
                    yield _RowError(f"{path.stem}:{i}", f"line {i + 1}: invalid JSON ({exc.msg})")
                    continue
                if not started and isinstance(obj, list):
                    break
                started = True
                yield obj
            else:
                continue
            break  # the first value did not stand alone on its line: one JSON document
        else:
            return
    yield from _json_objects(path)


def _read_memento_json(path: Path) -> Iterator[RawTrace | _RowError]:
    items = _iter_json_objects(path)
    ahead = next(items, _END)
    i = -1
    while ahead is not _END:
        obj, ahead = ahead, next(items, _END)
        i += 1
        if isinstance(obj, _RowError):
            yield obj
            continue
        tid = f"{path.stem}" if i == 0 and ahead is _END else f"{path.stem}:{i}"  # a lone object: the file's name
        if isinstance(obj, dict) and obj.get("id"):
            tid = str(obj["id"])
        try:
            raw = _memento_json_obj(tid, obj)
        except _RowError as exc:
            yield exc
            continue
        if "domain" not in raw.meta:  # the examples carry no domain; their file names do (…_math.json)
            hit = next((d for d in ("math", "code", "science") if d in path.stem.lower()), None)
            if hit:
                raw.meta["domain"] = hit
        yield raw


def _memento_json_obj(tid: str, obj: Any) -> RawTrace:
    if not isinstance(obj, dict) or not isinstance(obj.get("segments"), list):
        raise _RowError(tid, "expected an object with a `segments` list")
    blocks: dict[int, str] = {}
    mementos: dict[int, str] = {}
    answer = None
    for j, seg in enumerate(obj["segments"]):
        if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
            raise _RowError(tid, f"segment {j}: expected an object with a `text` string")
        _no_literal_delimiters(tid, f"segment {j}", seg["text"])
        kind = seg.get("type")
        if kind == "answer":
            answer = seg["text"]
            continue
        if kind not in ("block", "summary"):
            raise _RowError(tid, f"segment {j}: unknown type {kind!r}")
        idx = seg.get("block_idx")
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 1:
            raise _RowError(tid, f"segment {j}: block_idx must be a 1-based integer, got {idx!r}")
        target = blocks if kind == "block" else mementos
        if idx in target:
            raise _RowError(tid, f"segment {j}: second {kind} for block_idx {idx}")
        if kind == "summary" and idx not in blocks:
            raise _RowError(tid, f"segment {j}: summary for block_idx {idx} before (or without) its block")
        target[idx] = seg["text"]
    missing = sorted(set(blocks) - set(mementos))
    if missing:
        raise _RowError(tid, f"block_idx {missing[0]} has no summary segment")
    order = sorted(blocks)
    meta = {"format": "memento-json"}
    for key in ("problem_source", "answer", "label", "domain"):
        if obj.get(key) is not None:
            meta["expected_answer" if key == "answer" else key] = obj[key]
    response = render_segments([blocks[k] for k in order], [mementos[k] for k in order], answer)
    problem = str(obj.get("problem") or "")
    return RawTrace(tid, chatml_prompt(problem), response, meta, problem=problem)


def _read_vllm_jsonl(path: Path) -> Iterator[RawTrace | _RowError]:
    from memento_lens.runtime.validate import utf8_error

    offset = 0
    with open(path, "rb") as f:
        for i, raw_line in enumerate(f):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise utf8_error(path, exc, offset) from None
            offset += len(raw_line)
            if not line.strip():
                continue
            tid = f"{path.stem}:{i}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _RowError(tid, f"line {i + 1}: invalid JSON ({exc.msg})")
                continue
            try:
                yield _vllm_obj(tid, obj)
            except _RowError as exc:
                yield exc


def _vllm_obj(tid: str, obj: Any) -> RawTrace:
    if not isinstance(obj, dict):
        raise _RowError(tid, "expected a JSON object per line")
    tid = str(obj.get("request_id") or obj.get("id") or tid)
    out0 = obj["outputs"][0] if isinstance(obj.get("outputs"), list) and obj["outputs"] else {}
    text = next(
        (
            v
            for v in (
                obj.get("text"),
                obj.get("generated_text"),
                obj.get("output"),
                out0.get("text") if isinstance(out0, dict) else None,
            )
            if isinstance(v, str)
        ),
        None,
    )
    if text is None:
        raise _RowError(tid, "no generated text (text / generated_text / output / outputs[0].text)")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        prompt = ""
    ids = (
        obj.get("token_ids")
        or obj.get("output_token_ids")
        or (out0.get("token_ids") if isinstance(out0, dict) else None)
    )
    pids = obj.get("prompt_token_ids")
    ok = lambda v: isinstance(v, list) and all(isinstance(t, int) for t in v)  # noqa: E731
    if ids is not None and not ok(ids):
        raise _RowError(tid, "token_ids must be a list of integers")
    if pids is not None and not ok(pids):
        raise _RowError(tid, "prompt_token_ids must be a list of integers")
    return RawTrace(tid, prompt, text, {"format": "vllm-jsonl"}, prompt_ids=pids, response_ids=ids)


_READERS = {"openmementos": _read_openmementos, "memento-json": _read_memento_json, "vllm-jsonl": _read_vllm_jsonl}


# -- tokenization and validation ---------------------------------------------------------------------


def _to_trace(
    raw: RawTrace,
    tok: TextTokenizer,
    source: str,
    check: BlockMaskingConfig,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
) -> Trace:
    real_ids = not tok.name.startswith("approx")
    if raw.problem is not None:  # the model's own chat template (ChatML for approx and template-less tokenizers)
        raw.prompt = tok.prompt_text(raw.problem)
    if real_ids and raw.response_ids is not None:
        resp = np.asarray(raw.response_ids, dtype=np.int64)
        prompt = np.asarray(raw.prompt_ids, dtype=np.int64) if raw.prompt_ids is not None else tok.encode(raw.prompt)
    else:
        prompt, resp = (
            tok.encode_many([raw.prompt, raw.response])
            if raw.prompt
            else (np.zeros(0, np.int64), tok.encode(raw.response))
        )
    if len(resp) == 0:
        raise _RowError(raw.trace_id, "empty response")
    ids = np.concatenate([prompt, resp])
    _check_unk(ids, tok, raw.trace_id, source, max_unk_share)
    sched = fast_schedule(ids, check, tok.ids, prompt_len=len(prompt))
    if sched.warnings:
        w = sched.warnings[0]
        more = f" (+{len(sched.warnings) - 1} more)" if len(sched.warnings) > 1 else ""
        raise _RowError(raw.trace_id, w.message + more, position=w.position)
    last = sched.blocks[-1] if sched.blocks else None
    if last is not None and last.summary_start is not None and last.summary_end is None:
        raise _RowError(
            raw.trace_id,
            f"memento of block {last.block} opened at {last.summary_start} was never closed",
            position=last.summary_start,
        )
    block_chars, memento_chars = segment_chars(raw.response)
    meta = dict(
        raw.meta,
        source_file=source,
        n_blocks=len(sched.blocks),
        block_chars=block_chars,
        memento_chars=memento_chars,
        tokenizer=tok.name,
    )
    if keep_text:
        meta.update(prompt_text=raw.prompt, response_text=raw.response)
    return Trace(raw.trace_id, ids if arrays else ids.tolist(), len(prompt), meta)


def _check_unk(ids: np.ndarray, tok: TextTokenizer, trace: str, source: str, max_share: float) -> None:
    """More than ``max_share`` of <unk> means the tokenizer does not fit the text: an error, not a skipped row."""
    check_unk_share(ids, getattr(tok, "tokenizer", None), f"{source}: trace {trace}", tok.name, max_share)


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows in a trace file without parsing it (Parquet metadata, non-empty JSONL lines); None if unknown."""
    try:
        if fmt == "openmementos":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if path.name.lower().endswith(".jsonl"):
            with open(path, "rb") as f:
                return sum(1 for line in f if line.strip())
    except Exception:  # the reader reports a damaged file with its name; a count is only for the bar
        return None
    return None


def iter_ingest(
    path: str | Path,
    tokenizer: TextTokenizer | str | None = None,
    *,
    fmt: str | None = None,
    strict: bool = False,
    report: IngestReport | None = None,
    check: BlockMaskingConfig = _CHECK,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
    progress: Any = None,
) -> Iterator[Trace]:
    """Stream the well-formed traces of one file; skipped rows go into ``report`` (or raise under ``strict``).

    ``keep_text`` keeps the rendered prompt/response text in ``meta`` (``prompt_text``, ``response_text``)
    so :func:`write_run` can store readable token strings. ``arrays`` keeps ``token_ids`` as the int64 numpy
    array tokenization produced instead of a list (faster for bulk accounting; same values).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such trace file" if not path.exists() else f"{path}: not a file")
    tok = load_tokenizer(tokenizer)
    fmt = fmt or detect_format(path)
    if fmt not in _READERS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    report = report if report is not None else IngestReport()
    report.sources.append(str(path))
    seen: set[str] = set()
    n_here, rows_before = 0, report.n_rows
    from memento_lens.runtime.progress import bar_for

    bar = bar_for(progress, count_rows(path, fmt) or 0, "ingest", "row")
    for item in _READERS[fmt](path):
        report.n_rows += 1
        bar.update(1)
        try:
            if isinstance(item, _RowError):
                raise item
            if item.trace_id in seen:
                raise _RowError(item.trace_id, "duplicate trace id in this file")
            trace = _to_trace(item, tok, str(path), check, keep_text, arrays, max_unk_share)
        except _RowError as exc:
            issue = IngestIssue(str(path), exc.trace, exc.position, exc.message)
            if strict:
                raise IngestError(str(issue)) from None
            report.skipped.append(issue)
            continue
        seen.add(trace.trace_id)
        report.n_ingested += 1
        n_here += 1
        yield trace
    bar.close()
    if strict and n_here == 0:
        raise IngestError(f"{path}: no traces ({'no rows' if rows_before == report.n_rows else 'no usable rows'})")


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

    tok = load_tokenizer(tokenizer)
    ids: set[str] = set()
    paths = [Path(p) for p in paths]
    total = 0
    if progress is True:  # one bar over every file's rows (unknown counts just show the rate)
        counts = [count_rows(p, fmt or _format_or_none(p)) if p.is_file() else None for p in paths]
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


def _format_or_none(path: Path) -> str | None:
    try:
        return detect_format(path)
    except ConfigError:
        return None


# -- run directory -----------------------------------------------------------------------------------


def read_run_traces(path: str | Path):
    """The traces of a complete run directory (any kind) and the memento token ids they were tokenized with.

    Returns ``(traces, MementoTokenIds)``; ``meta['domain']`` is kept when the run's traces table has it.
    """
    from memento_lens.runtime.config import MementoTokenIds
    from memento_lens.runtime.errors import RunDirError
    from memento_lens.runtime.rundir.reader import open_run

    run = open_run(path, require_complete=True)
    manifest = run.manifest
    ids = manifest.config.get("tokens") or manifest.info.get("token_ids")
    if not isinstance(ids, dict):
        raise RunDirError(f"{Path(path) / 'manifest.json'}: records no memento token ids (config.tokens)")
    tokens = MementoTokenIds.from_dict(ids, where=f"{Path(path) / 'manifest.json'}: token ids")
    meta = run.table("traces")
    toks = run.table("tokens", columns=["trace", "pos", "token_id"]).sort_values(["trace", "pos"])
    grouped = {k: g["token_id"].to_numpy(np.int64) for k, g in toks.groupby("trace", sort=False)}
    traces = []
    for r in meta.to_dict(orient="records"):
        m = {"source_file": str(path)}
        if r.get("domain"):
            m["domain"] = r["domain"]
        traces.append(Trace(str(r["trace"]), grouped.get(r["trace"], np.zeros(0, np.int64)), int(r["prompt_len"]), m))
    return traces, tokens


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
    from .tokenization import APPROX_SPECIALS

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
        store.write_json("ingest_report.json", (report or IngestReport()).to_dict())
        store.write_json("traces_meta.json", metas)
        sources = sorted({str(m.get("source_file", "")) for m in metas.values()} - {""})
        store.mark_complete(
            n_traces=n_written,
            token_ids=tok.ids.to_dict(),
            sources=sources,
            model=f"ingested traces (KV accounted as {spec.name})",
        )
    return store
