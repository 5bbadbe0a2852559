"""``run``: the traces of a complete run directory (generate, replay, ingest), read back through
:class:`~memento_lens.runtime.rundir.reader.RunReader` with the memento token ids and tokenizer its manifest
records. A run of another kind (a probe or ablation run) is named as such: it holds no traces.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Iterator

import numpy as np
from memento_lens.runtime.config import MementoTokenIds
from memento_lens.runtime.errors import RunDirError
from memento_lens.runtime.trace import Trace

from .base import FileHead, Item, TraceFormat


class RunDir(TraceFormat):
    name = "run"
    help = "a run directory written by generate, replay or ingest"
    tokenized = True

    @classmethod
    def detect(cls, head: FileHead) -> bool:
        return head.is_dir

    @cached_property
    def run(self):
        from memento_lens.runtime.rundir import schema
        from memento_lens.runtime.rundir.reader import open_run

        run = open_run(self.path, require_complete=True)
        if not run.has(schema.TRACES) or not run.has(schema.TOKENS):
            kind = run.manifest.kind
            raise RunDirError(
                f"{self.path}: a {kind!r} run, which holds no traces (no traces/tokens tables); give a run written "
                "by generate, replay or ingest, or a trace file"
            )
        return run

    def count(self) -> int | None:
        return self.run.manifest.info.get("n_traces")

    @property
    def tokens(self) -> MementoTokenIds:
        manifest = self.run.manifest
        ids = manifest.config.get("tokens") or manifest.info.get("token_ids")
        where = f"{self.path / 'manifest.json'}"
        if not isinstance(ids, dict):
            raise RunDirError(f"{where}: records no memento token ids (config.tokens)")
        return MementoTokenIds.from_dict(ids, where=f"{where}: token ids")

    @property
    def recorded_tokenizer(self) -> dict[str, Any] | None:
        tok = self.run.manifest.config.get("tokenizer")
        return tok if isinstance(tok, dict) else None

    def read(self) -> Iterator[Item]:
        run = self.run
        meta = run.table("traces")
        toks = run.table("tokens", columns=["trace", "pos", "token_id"]).sort_values(["trace", "pos"], kind="stable")
        grouped = {k: g["token_id"].to_numpy(np.int64) for k, g in toks.groupby("trace", sort=False)}
        has_domain = "domain" in meta.columns
        for r in meta.itertuples(index=False):
            m: dict[str, Any] = {"source_file": str(self.path), "format": self.name}
            if has_domain and r.domain:
                m["domain"] = r.domain
            ids = grouped.get(r.trace, np.zeros(0, np.int64))
            yield Trace(str(r.trace), ids, int(r.prompt_len), m)
