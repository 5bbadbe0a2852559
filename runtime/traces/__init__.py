"""The one trace layer: every trace file format and run directories -> :class:`~memento_lens.runtime.trace.Trace`.

Every consumer reads traces through :func:`load_traces` (``ingest``, ``replay --traces``, ``kv``, ``stats``,
``probe passcode --trace``, the restart ablation, ``token-counts``); the chat template is applied in one place,
:func:`chat_prompt` (:mod:`.chat`).

Public API::

    load_traces(path, tokenizer=None, *, format=None, strict=False, report=None, check=CHECK,
                keep_text=False, arrays=False, max_unk_share=MAX_UNK_SHARE, progress=None) -> TraceSource
        TraceSource: iterable of Trace (re-reads the file per iteration; one trace in memory at a time);
        .list(), .format, .tokenizer (TextTokenizer | None), .tokens (MementoTokenIds | None),
        .recorded_tokenizer (a run's tokenizer description), .report (IngestReport of the latest pass)
    detect_format(path) -> str                  # raises for a raw chain-of-thought file, names it
    needs_tokenizer(path, format=None) -> bool  # a text format (False: token ids, a run directory)
    check_rows(path, format=None) -> int         # rows read untokenized, the first fault raised (before a model loads)
    FORMATS: dict[str, type[TraceFormat]]; register_format(cls) -> cls; unregister_format(name)
    TraceFormat (base.py): name, help, tokenized, fallback; detect(head: FileHead) -> bool (classmethod);
        read() -> Iterator[RawTrace | Trace | RowError]; count() -> int | None; tokens; recorded_tokenizer
    to_trace(raw: RawTrace, tokenizer, source, ...) -> Trace   # tokenize + validate one text row
    chat_prompt(tokenizer, problem) -> str | None; chatml_prompt(problem) -> str
    load_tokenizer(spec | TextTokenizer | HF tokenizer) -> TextTokenizer; ApproxTokenizer, HFTextTokenizer
    IngestError, IngestIssue, IngestReport, RawTrace, RowError, render_segments, segment_chars

Formats, one file each (registered in ``registry.py``, one line per format): ``memento_json.py``
(``memento-json``), ``openmementos.py`` (``openmementos``), ``vllm_jsonl.py`` (``vllm-jsonl``),
``token_ids.py`` (``token-ids``), ``rundir.py`` (``run``). A new format: a :class:`TraceFormat` subclass in one
file, plus one ``register_format(...)`` line.

Text rows: the problem in the tokenizer's chat template (ChatML for approx and template-less tokenizers) is the
prompt; the response is tokenized whole; the block structure is checked with the runtime's schedule (a stream
the schedule warns about, or a memento never closed, is a bad row: skipped and reported, or raised under
``strict``).
"""

from __future__ import annotations

from .base import (
    RAW_COT,
    FileHead,
    IngestError,
    IngestIssue,
    IngestReport,
    RawTrace,
    RowError,
    TraceFormat,
    render_segments,
    segment_chars,
)
from .chat import chat_prompt, chatml_prompt
from .load import CHECK, TraceSource, check_rows, load_traces, needs_tokenizer, to_trace
from .registry import FORMATS, detect_format, format_names, get_format, register_format, unregister_format
from .tokenizer import APPROX_SPECIALS, ApproxTokenizer, HFTextTokenizer, TextTokenizer, load_tokenizer

__all__ = [
    "APPROX_SPECIALS",
    "CHECK",
    "FORMATS",
    "RAW_COT",
    "ApproxTokenizer",
    "FileHead",
    "HFTextTokenizer",
    "IngestError",
    "IngestIssue",
    "IngestReport",
    "RawTrace",
    "RowError",
    "TextTokenizer",
    "TraceFormat",
    "TraceSource",
    "chat_prompt",
    "chatml_prompt",
    "check_rows",
    "detect_format",
    "format_names",
    "get_format",
    "load_tokenizer",
    "load_traces",
    "needs_tokenizer",
    "register_format",
    "render_segments",
    "segment_chars",
    "to_trace",
    "unregister_format",
]
