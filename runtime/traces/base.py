"""What every trace format shares: the format base class, a row before tokenization, the read report, JSON
(lines) reading with one clear error per file-level fault, and the segment helpers.

A format reads its file into items, one per row: a :class:`RawTrace` (text: tokenized and validated by
:func:`~.load.load_traces`), a :class:`~memento_lens.runtime.trace.Trace` (token ids already: used as they are)
or a :class:`RowError` (a bad row: skipped and reported, or raised under ``strict``). A fault of the whole
file (unreadable, not the format, the wrong kind of document) raises at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from memento_lens.runtime.config import (
    BLOCK_END,
    BLOCK_START,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
    ConfigError,
    MementoTokenIds,
)
from memento_lens.runtime.errors import InputFileError
from memento_lens.runtime.trace import Trace

# Structural tokens that must not appear literally inside a segment's text (they would open/close spans).
STRUCTURAL = (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END, THINK_START, THINK_END)
_DELIMS = re.compile("(" + "|".join(re.escape(t) for t in (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)) + ")")

RAW_COT = (
    "raw chain of thought (`task_id`, `cot`): no blocks or mementos yet; run the paper's segmentation "
    "pipeline first (microsoft/memento, data/), then read its output"
)


class IngestError(InputFileError, ConfigError):
    """A malformed trace under ``strict``, or a trace file that yields no trace; names the file, trace and
    position."""


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
    """What reading did: rows read, traces kept, and every skipped row with its reason."""

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
class RawTrace:
    """One row before tokenization (prompt + response text, or ids from vLLM).

    ``problem``: the bare problem when the prompt was built from one; re-rendered in the tokenizer's chat
    template (:func:`~.chat.chat_prompt`) by :func:`~.load.load_traces`.
    """

    trace_id: str
    prompt: str
    response: str
    meta: dict[str, Any]
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    problem: str | None = None


class RowError(Exception):
    """One bad row: skipped and reported (raised as :class:`IngestError` under ``strict``)."""

    def __init__(self, trace: str, message: str, position: int | None = None):
        super().__init__(message)
        self.trace, self.message, self.position = trace, message, position


Item = RawTrace | Trace | RowError


class FileHead:
    """What detection looks at, read lazily and once: the name, and for JSON files the first value."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name.lower()
        self.is_dir = path.is_dir()

    @cached_property
    def first_value(self) -> Any:
        """The first non-blank line parsed as JSON; :data:`NOT_JSON` when it does not parse on its own."""
        try:
            with open(self.path, "rb") as f:
                raw = next((ln for ln in f if ln.strip()), b"")
            return json.loads(raw.decode("utf-8")) if raw else NOT_JSON
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return NOT_JSON


NOT_JSON = object()


class TraceFormat:
    """One trace-file format: one small class per file in ``runtime/traces/``, registered by one line in
    ``registry.py``.

    Class attributes: ``name`` (the ``--format`` value), ``help`` (one line for ``--help``), ``tokenized``
    (its rows are token ids already: no tokenizer needed), ``fallback`` (tried after every other format: it
    claims files the specific formats did not).

    An instance reads one path: :meth:`read` yields the rows as :data:`Item`; ``tokens`` / ``recorded_tokenizer``
    are the memento ids and tokenizer description the file itself records (a run directory), else None.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    tokenized: ClassVar[bool] = False
    fallback: ClassVar[bool] = False

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def detect(cls, head: FileHead) -> bool:
        """Whether this format claims the file (by name, and by its first JSON value where that decides)."""
        return False

    def read(self) -> Iterator[Item]:
        raise NotImplementedError

    def count(self) -> int | None:
        """Rows in the file without parsing them (for a progress bar); None when unknown."""
        if self.path.name.lower().endswith(".jsonl"):
            try:
                with open(self.path, "rb") as f:
                    return sum(1 for line in f if line.strip())
            except OSError:
                return None
        return None

    @property
    def tokens(self) -> MementoTokenIds | None:
        return None

    @property
    def recorded_tokenizer(self) -> dict[str, Any] | None:
        return None


# -- JSON and JSON lines ---------------------------------------------------------------------------------------


def describe_value(obj: Any) -> str:
    """What a JSON value looks like, for an error saying which kind of document a file is."""
    first = obj[0] if isinstance(obj, list) and obj else obj
    if isinstance(first, dict):
        if "segments" in first:
            kind = "Memento JSON trace"
        elif "cot" in first and "segments" not in first:
            kind = "raw chain of thought"
        elif "token_ids" in first and not any(k in first for k in ("text", "generated_text", "outputs", "output")):
            kind = "token-id trace"
        else:
            kind = "object"
        return f"a list of {len(obj)} {kind}(s)" if isinstance(obj, list) else f"a {kind}"
    return f"a JSON {type(obj).__name__}"


def _document_error(path: Path, text: str, exc: json.JSONDecodeError) -> IngestError:
    byte = len(text[: exc.pos].encode("utf-8"))
    ends_inside = not text[exc.pos :].strip() or exc.msg.startswith("Unterminated string")
    cut = f" (the file ends inside a value after {len(text.encode('utf-8'))} bytes: truncated?)" if ends_inside else ""
    return IngestError(
        f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno} (byte offset {byte}): "
        f"{exc.msg.removesuffix(' starting at')}{cut}"
    )


def json_document(path: Path) -> Any:
    """The one JSON document in ``path``; a parse error names the file, line, column and byte offset."""
    from memento_lens.runtime.validate import read_text

    text = read_text(path, "trace file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _document_error(path, text, exc) from None


def json_values(
    path: Path, *, lines_only: bool = False, what: str = "JSON lines", numbered: bool = False
) -> Iterator[Any]:
    """The JSON values of ``path``, streamed: JSON lines (one value per line, one line in memory at a time), or
    one JSON document (a list yields its items).

    The kind is decided by the first non-blank line: a value on its own (and, unless ``lines_only``, not a
    list) means JSON lines, where a later line that does not parse is one :class:`RowError`
    (``line N: invalid JSON``); otherwise the file is one document, read whole, and a parse error is one
    :class:`IngestError` naming the line, column and byte offset (a truncated file fails here, once). With
    ``lines_only`` a document is refused, saying what it holds. Lines end at ``\\n`` only; non-UTF-8 bytes are an error naming the byte offset. ``numbered``: ``(index, value)`` pairs, the index
    being the 0-based line (JSON lines) or the item (a document).
    """
    from memento_lens.runtime.validate import utf8_error

    try:
        f = open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"{path}: unreadable ({exc.strerror or exc})") from None
    first_error: json.JSONDecodeError | None = None
    with f:
        started, i, offset = False, -1, 0
        for raw in f:  # lines end at b"\n" only, as JSON lines do (a raw U+2028 inside a string stays in its line)
            i += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise utf8_error(path, exc, offset) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                if not started:
                    first_error = exc
                    break
                err = RowError(f"{path.stem}:{i}", f"line {i + 1}: invalid JSON ({exc.msg})")
                yield (i, err) if numbered else err
                continue
            if not started and isinstance(obj, list) and not lines_only:
                break
            started = True
            yield (i, obj) if numbered else obj
        else:
            return
    if not lines_only:
        data = json_document(path)
        items = data if isinstance(data, list) else [data]
        yield from enumerate(items) if numbered else items
        return
    # JSON lines expected, and the first line is not a JSON value on its own: say what the file is instead.
    from memento_lens.runtime.validate import read_text

    text = read_text(path, "trace file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if len([ln for ln in text.splitlines() if ln.strip()]) <= 1:
            raise IngestError(f"{path}: line {i + 1}: invalid JSON ({first_error.msg})") from None
        raise IngestError(
            f"{path}: not {what}: line {i + 1} is not a JSON value on its own, and the file is not one JSON "
            f"document either ({_document_error(path, text, exc).args[0].split(': ', 1)[1]})"
        ) from None
    kind = describe_value(data)
    hint = (
        "read it with --format memento-json (or leave --format out)"
        if "Memento JSON" in kind
        else "write one object per line, or pick the format that reads it with --format"
    )
    raise IngestError(f"{path}: one JSON document ({kind}) spread over several lines, not {what}; {hint}")


# -- segments ----------------------------------------------------------------------------------------------------


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
    """``<think> (<|block_start|> block <|block_end|> <|summary_start|> memento <|summary_end|>)* </think> answer``."""
    body = "".join(f"{BLOCK_START}{b}{BLOCK_END}{SUMMARY_START}{m}{SUMMARY_END}" for b, m in zip(blocks, mementos))
    return f"{THINK_START}{body}{THINK_END}{answer or ''}"


def no_literal_delimiters(tid: str, where: str, text: str) -> None:
    """Segment text holding a structural token literally would change the block structure once rendered."""
    for tok in STRUCTURAL:
        at = text.find(tok)
        if at >= 0:
            raise RowError(tid, f"{where}: text holds the literal token {tok} at character {at}")


def is_raw_cot(obj: Any) -> bool:
    """A row of the paper pipeline's input (``task_id``, ``cot``): thinking text not yet cut into blocks."""
    return isinstance(obj, dict) and "cot" in obj and "segments" not in obj
