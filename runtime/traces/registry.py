"""The format registry: a new trace format is one file (a :class:`~.base.TraceFormat` subclass) plus one line
here (or one :func:`register_format` call from outside the package)."""

from __future__ import annotations

from pathlib import Path

from memento_lens.runtime.config import ConfigError
from memento_lens.runtime.errors import InputFileError

from .base import RAW_COT, FileHead, IngestError, TraceFormat, is_raw_cot
from .memento_json import MementoJson
from .openmementos import OpenMementos
from .rundir import RunDir
from .token_ids import TokenIds
from .vllm_jsonl import VllmJsonl

FORMATS: dict[str, type[TraceFormat]] = {}


def register_format(cls: type[TraceFormat]) -> type[TraceFormat]:
    """Add a format (usable as a class decorator); its ``name`` becomes a ``--format`` value. Detection tries
    the formats in registration order, the ``fallback`` ones last."""
    if not cls.name:
        raise ConfigError(f"trace format {cls.__name__}: set a `name`")
    FORMATS[cls.name] = cls
    return cls


def unregister_format(name: str) -> None:
    FORMATS.pop(name, None)


register_format(RunDir)
register_format(OpenMementos)
register_format(TokenIds)
register_format(MementoJson)
register_format(VllmJsonl)


def format_names() -> tuple[str, ...]:
    return tuple(FORMATS)


def get_format(name: str) -> type[TraceFormat]:
    if name not in FORMATS:
        raise ConfigError(f"--format {name!r}: expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


def detect_format(path: str | Path) -> str:
    """The name of the format that claims ``path`` (a raw chain-of-thought file is named as such)."""
    path = Path(path)
    head = FileHead(path)
    if not head.is_dir and head.name.endswith((".json", ".jsonl")) and is_raw_cot(head.first_value):
        raise IngestError(f"{path}: {RAW_COT}")
    ordered = sorted(FORMATS.values(), key=lambda c: c.fallback)  # stable: registration order, fallbacks last
    for cls in ordered:
        if cls.detect(head):
            return cls.name
    if not path.exists():
        raise InputFileError(f"{path}: no such trace file or run directory")
    raise ConfigError(
        f"{path}: unknown trace file type (expected a run directory, .parquet, .json or .jsonl); pass --format "
        f"({', '.join(FORMATS)})"
    )
