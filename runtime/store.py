"""Run directories: atomic writes, checksums, resume, and a refusal to clobber another run.

A run directory holds ``manifest.json`` (schema version, kind, status, the full config, checksums of
every file), tables as Parquet, tensors as safetensors and metadata as JSON. Nothing is ever pickled.
Every file is written to a temporary name and renamed into place, then recorded in the manifest, so an
interrupted run is left ``incomplete`` with only whole files, and can be resumed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .errors import RunDirError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
STATUS_INCOMPLETE = "incomplete"
STATUS_COMPLETE = "complete"


class RunError(RunDirError):
    """A run directory is missing, foreign, incomplete or corrupt; the message names the file."""


class CorruptFile(RunError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_via(path: Path, writer) -> None:
    """Call ``writer(tmp_path)`` then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default)


@dataclass
class Manifest:
    """What a run is. ``config`` is the full config that produced it (compared on resume)."""

    kind: str
    config: dict[str, Any]
    status: str = STATUS_INCOMPLETE
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "status": self.status,
            "created": self.created,
            "config": self.config,
            "files": self.files,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: Path) -> "Manifest":
        try:
            return cls(
                kind=d["kind"],
                config=d["config"],
                status=d["status"],
                schema_version=int(d["schema_version"]),
                created=d.get("created", ""),
                files=dict(d.get("files", {})),
                info=dict(d.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{where}: not a memento-lens manifest ({exc})") from None


class RunStore:
    """One run directory. Create with :meth:`create`, read with :meth:`open`."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        kind: str,
        config: Mapping[str, Any],
        *,
        overwrite: bool = False,
        resume: bool = False,
        info: Mapping[str, Any] | None = None,
    ) -> "RunStore":
        """Start (or resume) a run in ``path``.

        Refuses a directory that holds anything else unless ``overwrite``; with ``resume`` an incomplete
        run of the same kind and config is continued (its finished files kept).
        """
        path = Path(path)
        config = json.loads(dumps(dict(config)))
        mpath = path / MANIFEST
        if path.exists() and any(path.iterdir()):
            if mpath.exists() and resume and not overwrite:
                store = cls.open(path, verify=False, require_complete=False)
                if store.manifest.kind != kind or store.manifest.config != config:
                    raise RunError(
                        f"{path}: cannot resume: it holds a {store.manifest.kind!r} run with a "
                        "different config (pass --overwrite to replace it)"
                    )
                if store.manifest.status == STATUS_COMPLETE:
                    return store
                store._drop_unrecorded()
                return store
            if not overwrite:
                what = "a different run" if mpath.exists() else "files that are not a memento-lens run"
                raise RunError(
                    f"{path}: output directory already holds {what}; pass --overwrite to replace it"
                    + (" or --resume to continue it" if mpath.exists() else "")
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, Manifest(kind=kind, config=config, info=dict(info or {})))
        store._save_manifest()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True, require_complete: bool = False) -> "RunStore":
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory")
        if not mpath.exists():
            raise RunError(f"{mpath}: missing; {path} is not a memento-lens run")
        try:
            data = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFile(f"{mpath}: corrupt JSON ({exc})") from None
        manifest = Manifest.from_dict(data, mpath)
        if manifest.schema_version > SCHEMA_VERSION:
            raise RunError(
                f"{mpath}: schema version {manifest.schema_version} is newer than this "
                f"memento-lens ({SCHEMA_VERSION}); upgrade memento-lens"
            )
        store = cls(path, manifest)
        if require_complete and manifest.status != STATUS_COMPLETE:
            raise RunError(f"{path}: run is incomplete (interrupted?); resume it with --resume")
        if verify:
            for rel in manifest.files:
                store.verify_file(rel)
        return store

    def mark_complete(self, **info: Any) -> None:
        self.manifest.info.update(info)
        self.manifest.status = STATUS_COMPLETE
        self._save_manifest()

    @property
    def complete(self) -> bool:
        return self.manifest.status == STATUS_COMPLETE

    # -- files ---------------------------------------------------------------------------------
    def has(self, rel: str) -> bool:
        return rel in self.manifest.files and (self.path / rel).exists()

    def write_table(self, rel: str, df: pd.DataFrame) -> Path:
        """Write a Parquet table atomically and record its checksum."""
        return self._record(rel, lambda tmp: df.to_parquet(tmp, index=False))

    def read_table(self, rel: str, columns: list[str] | None = None) -> pd.DataFrame:
        self.verify_file(rel)
        try:
            return pd.read_parquet(self.path / rel, columns=columns)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise CorruptFile(f"{self.path / rel}: unreadable Parquet ({exc})") from None

    def write_json(self, rel: str, obj: Any) -> Path:
        data = dumps(obj).encode()
        return self._record(rel, lambda tmp: Path(tmp).write_bytes(data))

    def read_json(self, rel: str) -> Any:
        self.verify_file(rel)
        try:
            return json.loads((self.path / rel).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFile(f"{self.path / rel}: corrupt JSON ({exc})") from None

    def write_tensors(self, rel: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
        """Write torch tensors to a safetensors file atomically (contiguous CPU copies)."""
        from safetensors.torch import save_file

        flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        return self._record(rel, lambda tmp: save_file(flat, tmp, metadata=dict(metadata or {})))

    def read_tensors(self, rel: str, device: str = "cpu") -> dict[str, Any]:
        from safetensors.torch import load_file

        self.verify_file(rel)
        try:
            return load_file(str(self.path / rel), device=device)
        except Exception as exc:
            raise CorruptFile(f"{self.path / rel}: unreadable safetensors ({exc})") from None

    def add_file(self, rel: str, writer) -> Path:
        """Write any other file (e.g. a figure) through ``writer(tmp_path)`` and record it."""
        return self._record(rel, writer)

    def verify_file(self, rel: str) -> None:
        """Raise :class:`CorruptFile` naming the file when it is missing or its checksum differs."""
        entry = self.manifest.files.get(rel)
        full = self.path / rel
        if entry is None:
            raise RunError(f"{full}: not part of run {self.path} (never written, or the run was interrupted before it)")
        if not full.exists():
            raise CorruptFile(f"{full}: missing (recorded in {self.path / MANIFEST})")
        if full.stat().st_size != entry["bytes"] or _sha256(full) != entry["sha256"]:
            raise CorruptFile(
                f"{full}: checksum mismatch: the file was truncated or altered since it was written; re-create the run"
            )

    # -- internals -----------------------------------------------------------------------------
    def _record(self, rel: str, writer) -> Path:
        full = self.path / rel
        _atomic_via(full, writer)
        self.manifest.files[rel] = {"sha256": _sha256(full), "bytes": full.stat().st_size}
        self._save_manifest()
        return full

    def _save_manifest(self) -> None:
        atomic_write_bytes(self.path / MANIFEST, dumps(self.manifest.to_dict()).encode())

    def _drop_unrecorded(self) -> None:
        """On resume: delete temp files and files written but never recorded (killed mid-write)."""
        for p in self.path.rglob("*"):
            if p.is_file():
                rel = p.relative_to(self.path).as_posix()
                if rel != MANIFEST and rel not in self.manifest.files:
                    p.unlink()
