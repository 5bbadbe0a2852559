"""``token-ids``: JSON lines of ``{"trace", "token_ids", "prompt_len"}`` (integer ids of the model's vocabulary,
no text), as ``replay --traces`` has always read them.

Every row is checked as it is read (integers, ``0 <= prompt_len <= len``, unique trace ids) and a bad row is an
error naming the file, line and field: ids without text cannot be skipped quietly.
"""

from __future__ import annotations

from typing import Iterator

from memento_lens.runtime.errors import InputFileError
from memento_lens.runtime.trace import Trace

from .base import FileHead, Item, RowError, TraceFormat, json_values

_TEXT_KEYS = ("text", "generated_text", "output", "outputs", "prompt", "segments")


class TokenIds(TraceFormat):
    name = "token-ids"
    help = "JSONL of {trace, token_ids, prompt_len} (integer ids of the model's vocabulary)"
    tokenized = True

    @classmethod
    def detect(cls, head: FileHead) -> bool:
        first = head.first_value
        return (
            head.name.endswith(".jsonl")
            and isinstance(first, dict)
            and any(k in first for k in ("token_ids", "trace", "prompt_len"))
            and not any(k in first for k in _TEXT_KEYS)
        )

    def read(self) -> Iterator[Item]:
        from memento_lens.runtime.validate import check_int, check_token_ids

        path = self.path
        seen: set[str] = set()
        for i, obj in json_values(path, lines_only=True, what="token-id JSON lines", numbered=True):
            where = f"{path}: line {i + 1}"
            if isinstance(obj, RowError):
                raise InputFileError(f"{path}: {obj.message}")
            if not isinstance(obj, dict) or "token_ids" not in obj:
                raise InputFileError(f"{where}: expected an object with a `token_ids` list")
            tid = str(obj.get("trace", f"trace-{i:05d}"))
            if tid in seen:
                raise InputFileError(f"{where}: trace id {tid!r} appears twice")
            seen.add(tid)
            ids = check_token_ids(obj["token_ids"], f"{where}: field token_ids")
            pl = check_int(obj.get("prompt_len", 0), f"{where}: field prompt_len", min=0, max=len(ids))
            yield Trace(tid, ids, pl, {"format": self.name, "source_file": str(path)})
