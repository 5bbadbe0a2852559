"""Parts written by other processes: the part-commit API of a sharded run (cluster workers, one driver).

A run's ``manifest.json`` has one writer, the process that created the run (the driver). A worker writes a
part's files into the same run directory through a :class:`PartStore` (the same atomic, checksummed writes and
the same layout as :class:`~.store.RunStore`, through the same :class:`~.writer.RunWriter`) and hands their
records back; the driver records them with :func:`adopt` in one manifest write, so a part is committed whole or
not at all. A worker that dies before that leaves only files under our own names, which a resume rewrites
(``store._OUR_LAYOUT``): nothing is lost and nothing is recorded twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .store import CorruptFile, Manifest, RunStore


class PartStore(RunStore):
    """A view of run ``path`` for a worker process: writes files into it, never its manifest.

    ``manifest.files`` collects the records of what this view wrote (``{rel: {sha256, bytes}}``), for the
    run's owner to :func:`adopt`.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(Path(path), Manifest(kind="part", config={}))

    def _save_manifest(self) -> None:  # the owner's manifest is not ours to write
        pass

    def take_records(self) -> dict[str, dict[str, Any]]:
        """The records written since the last call (and forget them)."""
        out, self.manifest.files = dict(self.manifest.files), {}
        return out


def adopt(store: RunStore, records: Mapping[str, Mapping[str, Any]]) -> None:
    """Record files a :class:`PartStore` wrote into ``store``'s run, all in one manifest write.

    Each file must lie inside the run and have the size its writer recorded (else :class:`CorruptFile` naming
    it, and nothing is recorded).
    """
    for rel, entry in records.items():
        full = store.file(rel)
        if not full.is_file() or full.stat().st_size != entry["bytes"]:
            raise CorruptFile(f"{full}: missing or not the {entry['bytes']} bytes its writer recorded")
    store.manifest.files.update({rel: dict(entry) for rel, entry in records.items()})
    store._save_manifest()


__all__ = ["PartStore", "adopt"]
