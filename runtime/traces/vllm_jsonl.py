"""``vllm-jsonl``: the reference engine's output, one request per line: ``prompt``, the generated text with
special tokens (``text``, ``generated_text``, ``output`` or ``outputs[0].text``), optional ``prompt_token_ids``
and ``token_ids`` (or ``outputs[0].token_ids``), used as they are with a real tokenizer.

JSON lines only: a JSON document (pretty-printed, or a Memento JSON file) is refused as a whole, saying what it
is, never read line by line into invalid-JSON rows.
"""

from __future__ import annotations

from typing import Any, Iterator

from .base import RAW_COT, FileHead, Item, RawTrace, RowError, TraceFormat, is_raw_cot, json_values


class VllmJsonl(TraceFormat):
    name = "vllm-jsonl"
    help = "the reference engine's JSONL (.jsonl: prompt + generated text per line)"
    fallback = True  # any other .jsonl

    @classmethod
    def detect(cls, head: FileHead) -> bool:
        return head.name.endswith(".jsonl")

    def read(self) -> Iterator[Item]:
        for i, obj in json_values(self.path, lines_only=True, what="vLLM JSON lines", numbered=True):
            if isinstance(obj, RowError):
                yield obj
                continue
            if not isinstance(obj, dict):
                yield RowError(
                    f"{self.path.stem}:{i}",
                    f"line {i + 1}: expected a JSON object per line (a request with its generated text, or "
                    "{trace, token_ids, prompt_len} for token ids)",
                )
                continue
            try:
                yield vllm_obj(f"{self.path.stem}:{i}", obj)
            except RowError as exc:
                yield exc


def vllm_obj(tid: str, obj: Any) -> RawTrace:
    if is_raw_cot(obj):
        raise RowError(str(obj.get("task_id") or tid), RAW_COT)
    if not isinstance(obj, dict):
        raise RowError(tid, "expected a JSON object per line")
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
        raise RowError(tid, "no generated text (text / generated_text / output / outputs[0].text)")
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
        raise RowError(tid, "token_ids must be a list of integers")
    if pids is not None and not ok(pids):
        raise RowError(tid, "prompt_token_ids must be a list of integers")
    return RawTrace(tid, prompt, text, {"format": "vllm-jsonl"}, prompt_ids=pids, response_ids=ids)
