"""``load_traces``: any trace file or run directory -> validated :class:`~memento_lens.runtime.trace.Trace`, streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds
from memento_lens.runtime.errors import InputFileError
from memento_lens.runtime.schedule import Schedule, fast_schedule
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.validate import MAX_UNK_SHARE, check_unk_share

from .base import IngestError, IngestIssue, IngestReport, RawTrace, RowError, TraceFormat, segment_chars
from .registry import detect_format, get_format
from .tokenizer import TextTokenizer, load_tokenizer

# The structure every trace must have (block spans closed, mementos after their block), independent of how the
# caller will mask it.
CHECK = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0, require_assistant_section=False)


class TraceSource:
    """The traces of one file or run directory: iterate for :class:`Trace` (each iteration reads the file
    again, one trace in memory at a time), or :meth:`list`.

    Attributes:
        path: the file or run directory.
        format: the format's name (``--format`` value).
        reader: the :class:`~.base.TraceFormat` instance.
        tokenizer: the :class:`~.tokenizer.TextTokenizer` text rows are tokenized with (None for token-id
            formats read without one).
        tokens: memento token ids of the traces' vocabulary (the run's own for a run directory).
        recorded_tokenizer: the tokenizer description a run directory records (None otherwise).
        report: what the latest iteration read and skipped (:class:`~.base.IngestReport`).
    """

    def __init__(
        self,
        path: Path,
        reader: TraceFormat,
        tokenizer: TextTokenizer | None,
        *,
        strict: bool,
        report: IngestReport | None,
        check: BlockMaskingConfig,
        keep_text: bool,
        arrays: bool,
        max_unk_share: float,
        progress: Any,
    ):
        self.path, self.reader, self.tokenizer = path, reader, tokenizer
        self.format = reader.name
        self.strict, self.check, self.keep_text, self.arrays = strict, check, keep_text, arrays
        self.max_unk_share, self.progress = max_unk_share, progress
        self._report = report
        self.report = report if report is not None else IngestReport()

    @property
    def tokens(self) -> MementoTokenIds | None:
        own = self.reader.tokens
        if own is not None:
            return own
        return self.tokenizer.ids if self.tokenizer is not None else None

    @property
    def recorded_tokenizer(self) -> dict[str, Any] | None:
        return self.reader.recorded_tokenizer

    def list(self) -> list[Trace]:
        return list(self)

    def __iter__(self) -> Iterator[Trace]:
        from memento_lens.runtime.progress import bar_for

        path = self.path
        report = self._report if self._report is not None else IngestReport()
        self.report = report
        report.sources.append(str(path))
        seen: set[str] = set()
        n_here, rows_before = 0, report.n_rows
        bar = bar_for(self.progress, self.reader.count() or 0, "ingest", "row")
        for item in self.reader.read():
            report.n_rows += 1
            bar.update(1)
            try:
                if isinstance(item, RowError):
                    raise item
                if item.trace_id in seen:
                    raise RowError(item.trace_id, "duplicate trace id in this file")
                if isinstance(item, Trace):
                    trace = item
                    ids = np.asarray(trace.token_ids, dtype=np.int64)
                    trace = Trace(trace.trace_id, ids if self.arrays else ids.tolist(), trace.prompt_len, trace.meta)
                else:
                    trace = to_trace(
                        item, self.tokenizer, str(path), self.check, self.keep_text, self.arrays, self.max_unk_share
                    )
            except RowError as exc:
                issue = IngestIssue(str(path), exc.trace, exc.position, exc.message)
                if self.strict:
                    raise IngestError(str(issue)) from None
                report.skipped.append(issue)
                continue
            seen.add(trace.trace_id)
            report.n_ingested += 1
            n_here += 1
            yield trace
        bar.close()
        if self.strict and n_here == 0:
            raise IngestError(f"{path}: no traces ({'no rows' if rows_before == report.n_rows else 'no usable rows'})")


def load_traces(
    path: str | Path,
    tokenizer: Any = None,
    *,
    format: str | None = None,
    strict: bool = False,
    report: IngestReport | None = None,
    check: BlockMaskingConfig = CHECK,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
    progress: Any = None,
) -> TraceSource:
    """The traces of ``path`` (a trace file of any registered format, or a run directory), validated.

    Args:
        path: file or run directory.
        tokenizer: for text formats: a :class:`~.tokenizer.TextTokenizer`, a spec for
            :func:`~.tokenizer.load_tokenizer` (``"approx"``, ``"qwen3"``, a directory), or a loaded HF tokenizer
            (a model's own); None = approx. Token-id formats ignore it (it only supplies ``tokens``).
        format: a registered format name; None = detected (:func:`~.registry.detect_format`).
        strict: a bad row raises :class:`~.base.IngestError` (file, trace, position) instead of being skipped
            into ``report``; a file with no usable trace raises too.
        report: an :class:`~.base.IngestReport` to add to (several files into one); else a new one per iteration.
        check: the masking the structure is validated under (never the caller's eviction: structure only).
        keep_text: keep the rendered text in ``meta`` (``prompt_text``, ``response_text``) for token strings.
        arrays: ``token_ids`` as int64 numpy arrays instead of lists.
        max_unk_share: more ``<unk>`` than this share is an error (the tokenizer does not fit the text).
        progress: False, True or a caller's bar (:func:`memento_lens.runtime.progress.bar_for`).

    Raises at once (before any row): a missing path, an unknown format, a raw chain-of-thought file, a run
    without traces. The file-level faults found while reading (a truncated JSON document, a JSON document given
    as JSON lines) raise one :class:`~.base.IngestError` naming the file and the line/byte.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such trace file or run directory")
    name = format or detect_format(path)
    cls = get_format(name)
    if not path.is_dir() and not path.is_file():
        raise InputFileError(f"{path}: not a file")
    reader = cls(path)
    if cls.tokenized:
        _ = reader.tokens  # a run without traces or token ids is refused now, not mid-iteration
        tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    else:
        tok = load_tokenizer(tokenizer)
    return TraceSource(
        path,
        reader,
        tok,
        strict=strict,
        report=report,
        check=check,
        keep_text=keep_text,
        arrays=arrays,
        max_unk_share=max_unk_share,
        progress=progress,
    )


def to_trace(
    raw: RawTrace,
    tok: TextTokenizer,
    source: str,
    check: BlockMaskingConfig = CHECK,
    keep_text: bool = False,
    arrays: bool = False,
    max_unk_share: float = MAX_UNK_SHARE,
) -> Trace:
    """Tokenize one row (the problem in the tokenizer's chat template) and validate its block structure.

    Raises:
        RowError: empty response, a schedule warning (its position), a memento never closed.
    """
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
        raise RowError(raw.trace_id, "empty response")
    ids = np.concatenate([prompt, resp])
    check_unk_share(ids, getattr(tok, "tokenizer", None), f"{source}: trace {raw.trace_id}", tok.name, max_unk_share)
    sched = structure_schedule(ids, check, tok.ids, len(prompt))
    if sched.warnings:
        w = sched.warnings[0]
        more = f" (+{len(sched.warnings) - 1} more)" if len(sched.warnings) > 1 else ""
        raise RowError(raw.trace_id, w.message + more, position=w.position)
    last = sched.blocks[-1] if sched.blocks else None
    if last is not None and last.summary_start is not None and last.summary_end is None:
        raise RowError(
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


def structure_schedule(
    ids: np.ndarray, config: BlockMaskingConfig, tokens: MementoTokenIds, prompt_len: int
) -> Schedule:
    """Exactly ``compute_schedule(ids, config, tokens, prompt_len)`` at numpy speed (:func:`fast_schedule`): ~10x
    faster on long traces, where validation would otherwise cost more than approx tokenization."""
    return fast_schedule(ids, config, tokens, prompt_len=prompt_len)


def check_rows(path: str | Path, format: str | None = None) -> int:
    """Read a trace file's rows without tokenizing them (cheap: no tokenizer, no model) and raise the first
    file-level fault or bad row as :class:`~.base.IngestError` naming the file and row; the number of rows.
    A command that tokenizes with a model's tokenizer checks its input with this before loading the model."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such trace file or run directory")
    n = 0
    for item in get_format(format or detect_format(path))(path).read():
        if isinstance(item, RowError):
            raise IngestError(str(IngestIssue(str(path), item.trace, item.position, item.message)))
        n += 1
    if n == 0:
        raise IngestError(f"{path}: no traces (no rows)")
    return n


def needs_tokenizer(path: str | Path, format: str | None = None) -> bool:
    """Whether reading ``path`` needs a text tokenizer (a text format) or not (token ids, a run directory)."""
    return not get_format(format or detect_format(path)).tokenized
