"""``memento-json``: the Memento JSON examples (``../shared/data``): ``{"problem", "segments": [{"type":
"block"|"summary"|"answer", "block_idx" (1-based), "text"}]}``; one object, a list of them, or one per line.

Rendered as ``<think> (<|block_start|> block <|block_end|> <|summary_start|> memento <|summary_end|>)* </think>
answer`` after the problem in the tokenizer's chat template. Each block needs exactly one summary, after it.
"""

from __future__ import annotations

from typing import Any, Iterator

from .base import (
    RAW_COT,
    FileHead,
    Item,
    RawTrace,
    RowError,
    TraceFormat,
    is_raw_cot,
    json_values,
    no_literal_delimiters,
    render_segments,
)

_END = object()  # end of a stream (the reader's lookahead)


class MementoJson(TraceFormat):
    name = "memento-json"
    help = "Memento JSON (.json: one object or a list; .jsonl: one object with `segments` per line)"

    @classmethod
    def detect(cls, head: FileHead) -> bool:
        if head.name.endswith(".json"):
            return True
        if head.name.endswith(".jsonl"):
            first = head.first_value
            return isinstance(first, dict) and "segments" in first
        return False

    def read(self) -> Iterator[Item]:
        path = self.path
        items = json_values(path)
        ahead = next(items, _END)
        i = -1
        while ahead is not _END:
            obj, ahead = ahead, next(items, _END)
            i += 1
            if isinstance(obj, RowError):
                yield obj
                continue
            tid = f"{path.stem}" if i == 0 and ahead is _END else f"{path.stem}:{i}"  # a lone object: the file's name
            if isinstance(obj, dict) and obj.get("id"):
                tid = str(obj["id"])
            try:
                raw = memento_obj(tid, obj)
            except RowError as exc:
                yield exc
                continue
            if "domain" not in raw.meta:  # the examples carry no domain; their file names do (…_math.json)
                hit = next((d for d in ("math", "code", "science") if d in path.stem.lower()), None)
                if hit:
                    raw.meta["domain"] = hit
            yield raw


def memento_obj(tid: str, obj: Any) -> RawTrace:
    """One Memento JSON object as a :class:`RawTrace` (block indices checked)."""
    if is_raw_cot(obj):
        raise RowError(tid, RAW_COT)
    if not isinstance(obj, dict) or not isinstance(obj.get("segments"), list):
        raise RowError(tid, "expected an object with a `segments` list")
    blocks: dict[int, str] = {}
    mementos: dict[int, str] = {}
    answer = None
    for j, seg in enumerate(obj["segments"]):
        if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
            raise RowError(tid, f"segment {j}: expected an object with a `text` string")
        no_literal_delimiters(tid, f"segment {j}", seg["text"])
        kind = seg.get("type")
        if kind == "answer":
            answer = seg["text"]
            continue
        if kind not in ("block", "summary"):
            raise RowError(tid, f"segment {j}: unknown type {kind!r}")
        idx = seg.get("block_idx")
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 1:
            raise RowError(tid, f"segment {j}: block_idx must be a 1-based integer, got {idx!r}")
        target = blocks if kind == "block" else mementos
        if idx in target:
            raise RowError(tid, f"segment {j}: second {kind} for block_idx {idx}")
        if kind == "summary" and idx not in blocks:
            raise RowError(tid, f"segment {j}: summary for block_idx {idx} before (or without) its block")
        target[idx] = seg["text"]
    missing = sorted(set(blocks) - set(mementos))
    if missing:
        raise RowError(tid, f"block_idx {missing[0]} has no summary segment")
    order = sorted(blocks)
    meta = {"format": "memento-json"}
    for key in ("problem_source", "answer", "label", "domain"):
        if obj.get(key) is not None:
            meta["expected_answer" if key == "answer" else key] = obj[key]
    response = render_segments([blocks[k] for k in order], [mementos[k] for k in order], answer)
    problem = str(obj.get("problem") or "")
    return RawTrace(tid, "", response, meta, problem=problem)
