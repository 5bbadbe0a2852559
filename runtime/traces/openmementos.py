"""``openmementos``: OpenMementos Parquet as published (``default`` config: problem, response, domain, source,
difficulty; ``full`` adds sentences, blocks, block_summaries).

``response`` holds the special tokens inline; a row without a usable ``response`` is rendered from
sentences/blocks/block_summaries (a block is a contiguous run of sentences). Read in record batches.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from memento_lens.runtime.config import ConfigError

from .base import FileHead, Item, RawTrace, RowError, TraceFormat, no_literal_delimiters, render_segments

_COLUMNS = (
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


class OpenMementos(TraceFormat):
    name = "openmementos"
    help = "OpenMementos Parquet (.parquet)"
    batch_size = 512

    @classmethod
    def detect(cls, head: FileHead) -> bool:
        return head.name.endswith(".parquet")

    def _file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise ConfigError(f"{self.path}: unreadable Parquet ({exc})") from None

    def count(self) -> int | None:
        try:
            return int(self._file().metadata.num_rows)
        except ConfigError:
            return None

    def read(self) -> Iterator[Item]:
        path = self.path
        pf = self._file()
        names = set(pf.schema_arrow.names)
        wanted = [c for c in _COLUMNS if c in names]
        if "response" not in names and not {"sentences", "blocks", "block_summaries"} <= names:
            raise ConfigError(
                f"{path}: not an OpenMementos file (needs a `response` column, or sentences/blocks/"
                f"block_summaries; has {', '.join(sorted(names))})"
            )
        row = 0
        for batch in pf.iter_batches(batch_size=self.batch_size, columns=wanted):
            for rec in batch.to_pylist():
                tid = str(rec.get("id") or rec.get("task_id") or f"{path.stem}:{row}")
                row += 1
                try:
                    yield openmementos_row(tid, rec)
                except RowError as exc:
                    yield exc


def openmementos_row(tid: str, rec: Mapping[str, Any]) -> RawTrace:
    problem = rec.get("problem")
    if not isinstance(problem, str):
        problem = ""
    response = rec.get("response")
    meta = {k: rec.get(k) for k in ("domain", "source", "difficulty") if rec.get(k) is not None}
    if not isinstance(response, str) or not response:
        sentences, blocks, summaries = rec.get("sentences"), rec.get("blocks"), rec.get("block_summaries")
        if not (isinstance(sentences, list) and isinstance(blocks, list) and isinstance(summaries, list)):
            raise RowError(tid, "no `response` text and no sentences/blocks/block_summaries to render one from")
        if len(blocks) != len(summaries):
            raise RowError(tid, f"{len(blocks)} blocks but {len(summaries)} block_summaries")
        texts = []
        for i, idx in enumerate(blocks):
            try:
                lo, hi = min(idx), max(idx)  # a block is a contiguous run of sentences ([first, last] or all)
                texts.append(" ".join(sentences[lo : hi + 1]))
            except (TypeError, ValueError):
                raise RowError(tid, f"block {i}: bad sentence indices {idx!r}") from None
        for i, text in enumerate(texts):
            no_literal_delimiters(tid, f"block {i}", text)
        for i, text in enumerate(summaries):
            no_literal_delimiters(tid, f"block_summaries[{i}]", str(text))
        response = render_segments(texts, [str(s) for s in summaries], None)
    meta["format"] = "openmementos"
    return RawTrace(tid, "", response, meta, problem=problem)
