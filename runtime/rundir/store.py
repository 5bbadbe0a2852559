"""Run directories on disk: the manifest, atomic checksummed files, and the rules that keep data safe.

A run directory holds ``manifest.json`` (schema version, kind, status, the full config, sha256 and size of
every file), tables as Parquet, tensors as safetensors and metadata as JSON. Nothing is ever pickled.

Safety rules (what a user expects from git or HF datasets):

* Every file is written to a temporary name beside it and renamed into place, then recorded in the manifest,
  so an interrupted run holds only whole files and can be resumed. Files get the mode the umask gives.
* ``overwrite`` replaces only an empty directory or a memento-lens run (a valid manifest), never the current
  directory, one of its parents or ``/``. The new run is written beside the old one (same parent, a hidden
  name) and swapped in by rename when complete; the old run is deleted only after that. A failure at any
  point leaves the old run intact and nothing half-written under the target name. Files and folders the user
  added to the old run (anything its manifest does not list and that is not ours) are carried into the new run
  and listed (``carried``), never deleted.
* ``resume`` never deletes a file it did not write: unknown files are left and listed (``unrecorded``).
* Every path read from a manifest or an index resolves inside the run directory: absolute paths, ``..`` and
  symbolic links are refused with an error naming the file.
* The same command on its own complete run returns that run (``reused``); a different config is refused
  naming the first differing field.
* A full disk or a read-only target raises :class:`OutputError` naming the path (one line).
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping

import pandas as pd

from ..errors import OptionError, OutputError, RunDirError
from . import schema
from .schema import SCHEMA_VERSION

MANIFEST = "manifest.json"
STATUS_INCOMPLETE = "incomplete"
STATUS_COMPLETE = "complete"
TMP_SUFFIX = ".ml-tmp"  # our temporary files (the only files resume may delete)
_STAGING = ".{name}.overwrite-"  # an overwrite's new run, beside the old one
_REPLACED = ".{name}.replaced-"  # the old run between the swap and its deletion
# Files our writers create under these names; one found unrecorded on resume was cut off before the
# manifest listed it, and is rewritten under the same name (not reported as a stranger).
_OUR_LAYOUT = re.compile(r"^(parts/\d{5}/[a-z_]+\.parquet|(kv|attention)/shard-\d{5}\.safetensors)$")
# Directories our writers create; one left empty (a write cut off before its file) is ours, not the user's.
_OUR_DIRS = re.compile(r"^(parts(/\d{5})?|kv|attention|figures|features(/[^/]+)*)$")

# Manifest migrations: ``MIGRATIONS[v]`` turns a version-v manifest dict into a version-(v+1) one (and may
# rewrite files through the store it gets). None yet: version 1 is the first.
MIGRATIONS: dict[int, Callable[[dict[str, Any], Path], dict[str, Any]]] = {}


class RunError(RunDirError):
    """A run directory is missing, foreign, incomplete or corrupt; the message names the file."""


class CorruptFile(RunError):
    """A recorded file is missing, truncated, altered or unreadable; the message names it."""


class UnsafePath(RunError):
    """A manifest or index entry points outside the run (absolute, ``..``, a symbolic link)."""


# ---------------------------------------------------------------------------------------------------------
# Paths and low-level writes
# ---------------------------------------------------------------------------------------------------------
def check_relative(rel: Any, where: Any) -> PurePosixPath:
    """A run-relative POSIX path from a manifest or index (``where`` names that file), or UnsafePath."""
    if not isinstance(rel, str) or not rel:
        raise UnsafePath(f"{where}: entry {rel!r} is not a file path inside the run")
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("\\") or re.match(r"^[A-Za-z]:", rel):
        raise UnsafePath(f"{where}: entry {rel!r} is an absolute path; run files must lie inside the run directory")
    if any(part in ("..", ".") or "\\" in part for part in p.parts) or rel.endswith("/"):
        raise UnsafePath(f"{where}: entry {rel!r} points outside the run directory (or is not a plain path)")
    return p


def resolve_inside(root: Path, rel: Any, where: Any) -> Path:
    """``root / rel``, refusing absolute paths, ``..`` and symbolic links on the way (UnsafePath naming ``where``)."""
    cur = root
    for part in check_relative(rel, where).parts:
        cur = cur / part
        if cur.is_symlink():
            raise UnsafePath(
                f"{cur}: is a symbolic link (listed in {where}); run files must be regular files inside {root}"
            )
    return cur


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EDQUOT: "disk quota exceeded",
    }.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"{path}: cannot write ({reason}); nothing already complete was changed")


def _umask() -> int:
    """The process umask, read without changing it (Linux exposes it; elsewhere set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_tmp(path: Path) -> Path:
    """Create an empty temporary file beside ``path``; mode 0666 minus the umask (like any new file)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write_via(path: str | os.PathLike, writer: Callable[[str], Any]) -> None:
    """Call ``writer(tmp_path)``, fsync, and rename into ``path``; on any failure ``path`` is untouched.

    OSErrors (disk full, read-only) become :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_tmp(path)
        writer(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create their file 0600 themselves
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputError):
            raise
        raise _output_error(path, exc) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_via(path, lambda tmp: Path(tmp).write_bytes(data))


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


def json_rows(rows: list[dict]) -> list[dict]:
    """JSON-safe copies of table rows (``df.to_dict("records")``): numpy scalars -> Python, NaN -> None."""
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and v != v:  # NaN
                v = None
            d[k] = v
        out.append(d)
    return out


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first field (dotted path, sorted keys) where two JSON-like configs differ, with both values.

    Lists are compared item by item: the message names the first differing index (and both lengths when they
    differ), so two long lists never read as two identical truncated values.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                return f"{name} (not in the existing run; this command: {_short(new[k])})"
            if k not in new:
                return f"{name} (existing run: {_short(old[k])}; not set by this command)"
            d = first_difference(old[k], new[k], name)
            if d is not None:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new)):
            d = first_difference(a, b, f"{prefix}[{i}]")
            if d is not None:
                if len(old) != len(new):
                    d += f"; {prefix or 'config'} has {len(old)} items in the existing run, {len(new)} in this command"
                return d
        if len(old) != len(new):
            i = min(len(old), len(new))
            extra = (
                f"existing run's [{i}]: {_short(old[i])}" if len(old) > i else f"this command's [{i}]: {_short(new[i])}"
            )
            return (
                f"{prefix or 'config'} (existing run: {len(old)} items; this command: {len(new)} items; "
                f"the first {i} are equal, then {extra})"
            )
        return None
    if old != new:
        a, b = _short(old), _short(new)
        if a == b or (a.endswith("...") and a[:57] == b[:57]):  # long values equal in their first characters
            a, b = _around_difference(old, new)
        return f"{prefix or 'config'} (existing run: {a}; this command: {b})"
    return None


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _around_difference(old: Any, new: Any) -> tuple[str, str]:
    """Both values shown around their first differing character (with its offset): long values that start
    alike are told apart."""
    a, b = json.dumps(old, sort_keys=True, default=str), json.dumps(new, sort_keys=True, default=str)
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, i - 20)
    return tuple(f"...{s[lo : i + 30]}{'...' if len(s) > i + 30 else ''} (differs at character {i})" for s in (a, b))


# ---------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """What a run is. ``config`` is the full config that produced it (compared on resume).

    Typed facts (None when the producer did not record them; older runs: see ``RunReader.model`` /
    ``RunReader.chance`` for the fallbacks):
        model: the model that produced the run's numbers: ``{"name", "checkpoint", "bytes_per_token", ...}``
            (``bytes_per_token``: what one cached token costs in that model; the run's KV byte counts use it);
            recorded with :meth:`RunStore.record_model`.
        chance: chance accuracy of the probed label (``schema.PASSCODE_CHANCE`` for the passcode task).
    """

    kind: str
    config: dict[str, Any]
    status: str = STATUS_INCOMPLETE
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    chance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "status": self.status,
            "created": self.created,
            "config": self.config,
            "files": self.files,
            "info": self.info,
        }
        if self.model is not None:
            d["model"] = self.model
        if self.chance is not None:
            d["chance"] = self.chance
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: Path) -> "Manifest":
        try:
            m = cls(
                kind=d["kind"],
                config=d["config"],
                status=d["status"],
                schema_version=int(d["schema_version"]),
                created=d.get("created", ""),
                files=dict(d.get("files", {})),
                info=dict(d.get("info", {})),
                model=dict(d["model"]) if d.get("model") is not None else None,
                chance=float(d["chance"]) if d.get("chance") is not None else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunError(f"{where}: not a memento-lens manifest ({exc})") from None
        for rel, entry in m.files.items():
            check_relative(rel, where)
            if not isinstance(entry, dict) or "sha256" not in entry or "bytes" not in entry:
                raise RunError(f"{where}: entry {rel!r} lacks its sha256/bytes")
        return m


def read_manifest(path: Path) -> Manifest:
    """The manifest of run directory ``path``: refuses a missing, corrupt, symlinked or other-version one."""
    mpath = path / MANIFEST
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    if mpath.is_symlink():
        raise UnsafePath(f"{mpath}: is a symbolic link; a run's manifest must be a regular file")
    if not mpath.exists():
        raise RunError(f"{mpath}: missing; {path} is not a memento-lens run")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{mpath}: corrupt JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunError(f"{mpath}: not a memento-lens manifest (not a JSON object)")
    try:
        version = int(data.get("schema_version", 0))
    except (TypeError, ValueError):
        raise RunError(f"{mpath}: schema_version {data.get('schema_version')!r} is not a number") from None
    if version > SCHEMA_VERSION:
        raise RunError(
            f"{mpath}: schema version {version} is newer than this memento-lens reads ({SCHEMA_VERSION}); "
            "upgrade memento-lens"
        )
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise RunError(
                f"{mpath}: schema version {version} is older than this memento-lens reads ({SCHEMA_VERSION}) "
                "and cannot be migrated; re-create the run with this version"
            )
        data = MIGRATIONS[version](data, path)
        version += 1
        data["schema_version"] = version
    return Manifest.from_dict(data, mpath)


def _refuse_dangerous(path: Path) -> None:
    """Never overwrite the current directory, one of its parents, or ``/``."""
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor) or cwd == target or target in cwd.parents:
        raise RunError(
            f"{path}: refusing to overwrite {'/' if target == Path(target.anchor) else 'the current directory or one of its parents'}"
            " (resolves to " + str(target) + "); choose a run directory of its own with --out"
        )


# ---------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------
class RunStore:
    """One run directory: the only code that writes run files. Create with :meth:`create`, read with :meth:`open`.

    Attributes:
        path: where the run lives (during an overwrite: the hidden staging directory beside the target,
            until :meth:`mark_complete` swaps it in).
        reused: ``create`` found this same command's complete run; nothing needs to be written.
        unrecorded: on resume, files in the directory this run did not write (left in place).
        carried: on overwrite, the files and folders (``name/``) the user had added to the replaced run; they
            are moved into the new run when it is swapped in (until then: what will be carried).
        carried_as: ``{old name: new name}`` for a carried file whose name the new run had taken itself.
    """

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self.reused = False
        self.unrecorded: list[str] = []
        self.carried: list[str] = []
        self.carried_as: dict[str, str] = {}
        self.left_in: Path | None = None  # a carry that failed: the old run's folder still holding user files
        self._target: Path | None = None  # an overwrite's final location
        self._replaced: set[str] = set()  # the replaced run's recorded files (ours: not carried)
        self._fresh: str | None = None  # "new"/"empty": created by this command in place (abort may remove it)

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
        can_resume: bool = True,
        replace: Callable[["Manifest"], bool] | None = None,
    ) -> "RunStore":
        """Start, resume or reuse a run in ``path``.

        * empty or missing ``path``: a new run.
        * ``path`` holds this same command's run (same kind and config): complete -> returned with
          ``reused`` set (the caller writes nothing); incomplete -> continued with ``resume``, else refused.
        * ``path`` holds a different run: refused naming the first differing field, unless ``overwrite``.
        * ``path`` holds anything else: refused, ``overwrite`` or not.

        Args:
            can_resume: whether the calling command has a resume option (only options it has are advised).
            replace: the caller's own earlier runs it replaces without ``overwrite`` (the demo replaces an earlier
                demo): a run for which ``replace(manifest)`` holds is replaced as with ``overwrite`` (the same
                rules: staged beside it, swapped in when complete), unless it is this same command's complete
                run, which is reused.
        """
        path = Path(path)
        if overwrite and resume:
            raise OptionError(
                f"{path}: --resume and --overwrite cannot be used together (--resume continues the run there, "
                "--overwrite replaces it); pass one of them"
            )
        config = json.loads(dumps(dict(config)))
        if path.exists() and not path.is_dir():
            raise RunError(f"{path}: exists and is not a directory; choose another output directory")
        if overwrite:
            _refuse_dangerous(path)
        if path.is_dir() and any(path.iterdir()):
            try:
                existing = read_manifest(path)
            except RunError as exc:
                if not (path / MANIFEST).exists():
                    raise RunError(
                        f"{path}: holds files that are not a memento-lens run (no {MANIFEST}); refusing to write "
                        "into it or replace it; choose another output directory"
                    ) from None
                raise RunError(f"{exc}; refusing to replace it; choose another output directory") from None
            if overwrite:
                return cls._staged(path, kind, config, info, existing)
            diff = first_difference(existing.config, config)
            if existing.kind != kind:
                diff = f"kind (existing run: {existing.kind!r}; this command: {kind!r})"
            if replace is not None and (diff is not None or existing.status != STATUS_COMPLETE) and replace(existing):
                _refuse_dangerous(path)
                return cls._staged(path, kind, config, info, existing)
            if diff is not None:
                raise RunError(
                    f"{path}: holds a different {existing.kind!r} run; first difference: {diff}. "
                    "Pass --overwrite to replace it, or choose another output directory"
                )
            store = cls(path, existing)
            if existing.status == STATUS_COMPLETE:
                store.reused = True
                return store
            if not resume:
                advice = (
                    "pass --resume to continue it or --overwrite to start over"
                    if can_resume
                    else ("pass --overwrite to start over")
                )
                raise RunError(f"{path}: holds an incomplete run of this same command (interrupted?); {advice}")
            store.unrecorded = store._clean_for_resume()
            return store
        existed = path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _output_error(path, exc) from None
        store = cls(path, Manifest(kind=kind, config=config, info=dict(info or {})))
        store._save_manifest()
        store._fresh = "empty" if existed else "new"
        return store

    @classmethod
    def _staged(
        cls, target: Path, kind: str, config: dict, info: Mapping[str, Any] | None, existing: Manifest
    ) -> "RunStore":
        """A new run written beside ``target`` under a hidden name, swapped in by :meth:`mark_complete`; the
        user's files in the replaced run (``existing``) are carried into it then."""
        parent = target.absolute().parent  # beside the target as named (a symlinked target: beside the link)
        prefix = _STAGING.format(name=target.name)
        for stale in parent.glob(prefix + "*"):  # an earlier overwrite that failed without cleaning up
            if stale.is_dir() and not stale.is_symlink() and (stale / MANIFEST).is_file():
                shutil.rmtree(stale, ignore_errors=True)
        staging = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            staging.mkdir()
        except OSError as exc:
            raise _output_error(staging, exc) from None
        store = cls(staging, Manifest(kind=kind, config=config, info=dict(info or {})))
        store._target = target
        store._replaced = set(existing.files)
        if not target.is_symlink():  # a linked run: the link is replaced, the folder it points to stays as it is
            store.carried = user_entries(target, store._replaced)
        try:
            store._save_manifest()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True, require_complete: bool = False) -> "RunStore":
        path = Path(path)
        manifest = read_manifest(path)
        store = cls(path, manifest)
        if require_complete and manifest.status != STATUS_COMPLETE:
            raise RunError(
                f"{path}: run is incomplete (interrupted?); finish it by re-running the command that wrote it"
            )
        if verify:
            for rel in manifest.files:
                store.verify_file(rel)
        return store

    def mark_complete(self, *, chance: float | None = None, **info: Any) -> None:
        """Record the run as complete; an overwrite's new run is swapped in here (the old one deleted after).

        ``chance``: the manifest's typed chance level (see :class:`Manifest`); other keywords go to ``info``.
        """
        if chance is not None:
            self.manifest.chance = float(chance)
        self.manifest.info.update(info)
        self.manifest.status = STATUS_COMPLETE
        self._save_manifest()
        if self._target is not None:
            self._swap_in()

    def abort(self) -> None:
        """After a failure: remove an overwrite's unfinished new run (the old run was never touched).

        An in-place run is left as it is: incomplete, with only whole files, resumable.
        """
        if self._target is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        elif self._fresh and not self.manifest.files:  # failed before writing anything: leave no trace
            (self.path / MANIFEST).unlink(missing_ok=True)
            if self._fresh == "new" and not user_entries(self.path, set()):  # never a file a user put there since
                shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _swap_in(self) -> None:
        target, staging = self._target, self.path
        assert target is not None
        old = target.absolute().parent / f"{_REPLACED.format(name=target.name)}{secrets.token_hex(4)}"
        try:
            if target.exists():
                os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                if old.exists():
                    os.rename(old, target)
                raise
        except OSError as exc:
            raise _output_error(target, exc) from None
        self.path, self._target = target, None
        if old.is_symlink():  # the target was a link: drop the link, never what it pointed to
            old.unlink()
        elif old.exists():
            self._carry_from(old)

    def _carry_from(self, old: Path) -> None:
        """Move the user's files from the replaced run (now at ``old``) into this one, then delete what is left
        of the replaced run, which is only ours. A move that fails leaves ``old`` in place (``left_in``)."""
        self.carried = user_entries(old, self._replaced)
        taken = set(self.manifest.files) | {MANIFEST}
        try:
            for rel in self.carried:
                name = rel.rstrip("/")
                dest = _free_name(self.path, name, taken)
                if dest != name:
                    self.carried_as[rel] = dest + ("/" if rel.endswith("/") else "")
                (self.path / dest).parent.mkdir(parents=True, exist_ok=True)
                os.rename(old / name, self.path / dest)
        except OSError:
            self.left_in = old  # the user's files not yet moved stay there; nothing of theirs is deleted
            return
        if not user_entries(old, self._replaced):  # only our files remain
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.left_in = old

    def record_model(self, model: Mapping[str, Any]) -> None:
        """Record the manifest's typed model identity (``name``, ``checkpoint``, ``bytes_per_token``, ...)."""
        self.manifest.model = json.loads(dumps(dict(model)))
        self._save_manifest()

    @property
    def complete(self) -> bool:
        return self.manifest.status == STATUS_COMPLETE

    def notes(self) -> list[str]:
        """What a command should tell its user about how it found the directory (one line each)."""
        out = []
        if self.reused:
            out.append(f"{self.path}: already holds the complete run of this same command; nothing to do")
        if self.unrecorded:
            shown = ", ".join(self.unrecorded[:10]) + (
                f" and {len(self.unrecorded) - 10} more" if len(self.unrecorded) > 10 else ""
            )
            out.append(f"{self.path}: left {len(self.unrecorded)} file(s) this run did not write: {shown}")
        if self.carried:
            verb = "will keep" if self._target is not None else "kept"
            names = [f"{r} (as {self.carried_as[r]})" if r in self.carried_as else r for r in self.carried]
            out.append(
                f"{self._target or self.path}: {verb} {len(names)} file(s)/folder(s) you added to the replaced run "
                f"(carried into the new run): {', '.join(names)}"
            )
        if self.left_in is not None:
            out.append(
                f"{self.left_in}: the replaced run's folder was kept because it still holds files you added to it; "
                "move them out and delete it"
            )
        return out

    # -- files ---------------------------------------------------------------------------------
    def file(self, rel: str) -> Path:
        """Full path of run-relative ``rel``, refusing paths that lead outside the run (UnsafePath)."""
        return resolve_inside(self.path, rel, self.path / MANIFEST)

    def has(self, rel: str) -> bool:
        return rel in self.manifest.files and self.file(rel).exists()

    def write_table(self, rel: str | schema.Table, df: pd.DataFrame) -> Path:
        """Write a Parquet table atomically and record its checksum. A run table (by :class:`~.schema.Table`,
        its path, or its name inside ``parts/NNNNN/``) is first put in its schema's column order and dtypes."""
        table = rel if isinstance(rel, schema.Table) else _table_of(rel)
        if isinstance(rel, schema.Table):
            rel = rel.path
        if table is not None:
            df = table.frame(df)
        return self._record(rel, lambda tmp: df.to_parquet(tmp, index=False))

    @contextmanager
    def table_stream(self, rel: str | schema.Table) -> Iterator[Callable[[pd.DataFrame], None]]:
        """Write a Parquet table in row groups as its rows arrive (bounded memory): ``with
        store.table_stream(t) as append: append(df)...``. Atomic and checksummed like :meth:`write_table` (the
        file appears only when the block ends without error); every chunk must have the first chunk's schema."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = rel if isinstance(rel, schema.Table) else _table_of(rel)
        if isinstance(rel, schema.Table):
            rel = rel.path
        state: dict[str, Any] = {}

        def append(df: pd.DataFrame) -> None:
            if table is not None:
                df = table.frame(df)
            t = pa.Table.from_pandas(df, preserve_index=False)
            if "writer" not in state:
                state["schema"], state["writer"] = t.schema, pq.ParquetWriter(state["tmp"], t.schema)
            elif not t.schema.equals(state["schema"], check_metadata=False):
                raise ValueError(f"{rel}: chunk schema {t.schema} differs from the first chunk's {state['schema']}")
            state["writer"].write_table(t.replace_schema_metadata(state["schema"].metadata))

        full = self.file(rel)
        full.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_tmp(full)
        state["tmp"] = str(tmp)
        try:
            yield append
            if "writer" in state:
                state["writer"].close()
                state.pop("writer")
            else:  # no rows: an empty table with the schema's columns
                (table.empty() if table is not None else pd.DataFrame()).to_parquet(tmp, index=False)
            os.chmod(tmp, 0o666 & ~_umask())
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, full)
        except BaseException as exc:
            if "writer" in state:
                state["writer"].close()
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise _output_error(full, exc) from None
            raise
        self.manifest.files[rel] = {"sha256": _sha256(full), "bytes": full.stat().st_size}
        self._save_manifest()

    def read_table(
        self, rel: str | schema.Table, columns: list[str] | None = None, filters: Any = None
    ) -> pd.DataFrame:
        """A table of this run: the same read as :meth:`RunReader.table <.reader.RunReader.table>` (the one read
        path: merged or an unfinished run's committed parts, checksum verified, checked against its schema)."""
        return read_table(self, rel, columns=columns, filters=filters)

    def write_json(self, rel: str, obj: Any) -> Path:
        data = dumps(obj).encode()
        return self._record(rel, lambda tmp: Path(tmp).write_bytes(data))

    def read_json(self, rel: str) -> Any:
        full = self.verify_file(rel)
        try:
            return json.loads(full.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFile(f"{full}: corrupt JSON ({exc})") from None

    def write_tensors(self, rel: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
        """Write torch tensors to a safetensors file atomically (contiguous CPU copies)."""
        from safetensors.torch import save_file

        flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        return self._record(rel, lambda tmp: save_file(flat, tmp, metadata=dict(metadata or {})))

    def read_tensors(self, rel: str, device: str = "cpu") -> dict[str, Any]:
        from safetensors.torch import load_file

        full = self.verify_file(rel)
        try:
            return load_file(str(full), device=device)
        except Exception as exc:
            raise CorruptFile(f"{full}: unreadable safetensors ({exc})") from None

    def add_file(self, rel: str, writer: Callable[[str], Any]) -> Path:
        """Write any other file (e.g. a figure) through ``writer(tmp_path)`` and record it."""
        return self._record(rel, writer)

    def verify_file(self, rel: str) -> Path:
        """The full path of recorded file ``rel`` after checking it: inside the run, present, checksum intact.

        Raises UnsafePath / RunError / CorruptFile naming the file.
        """
        full = self.file(rel)
        entry = self.manifest.files.get(rel)
        if entry is None:
            raise RunError(f"{full}: not part of run {self.path} (never written, or the run was interrupted before it)")
        if not full.is_file():
            raise CorruptFile(f"{full}: missing (recorded in {self.path / MANIFEST})")
        if full.stat().st_size != entry["bytes"] or _sha256(full) != entry["sha256"]:
            raise CorruptFile(
                f"{full}: checksum mismatch: the file was truncated or altered since it was written; re-create the run"
            )
        return full

    # -- internals -----------------------------------------------------------------------------
    def _record(self, rel: str, writer: Callable[[str], Any]) -> Path:
        full = self.file(rel)
        atomic_write_via(full, writer)
        self.manifest.files[rel] = {"sha256": _sha256(full), "bytes": full.stat().st_size}
        self._save_manifest()
        return full

    def _save_manifest(self) -> None:
        atomic_write_bytes(self.path / MANIFEST, dumps(self.manifest.to_dict()).encode())

    def _clean_for_resume(self) -> list[str]:
        """On resume: delete only our own temporary files (``*.ml-tmp``); return every other file the
        manifest does not list (a user's notes, a file written but never recorded), which is left in place."""
        unknown = []
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path).as_posix()
            if p.is_symlink() or not p.is_file() or rel == MANIFEST or rel in self.manifest.files:
                continue
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
                p.unlink()
            elif not _OUR_LAYOUT.match(rel):
                unknown.append(rel)
        return unknown


def is_ours(rel: str, recorded: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether run-relative file ``rel`` is a memento-lens file: recorded in the manifest, the manifest
    itself, one of our temporaries, or a file of our layout cut off before the manifest listed it."""
    name = rel.rsplit("/", 1)[-1]
    return (
        rel in recorded
        or rel == MANIFEST
        or (name.startswith(".") and name.endswith(TMP_SUFFIX))
        or bool(_OUR_LAYOUT.match(rel))
    )


def user_entries(root: Path, recorded: set[str] | frozenset[str]) -> list[str]:
    """What a user added to run directory ``root`` (``recorded``: its manifest's files), sorted: files, and
    folders (``name/``) that hold nothing of ours, as single entries. Symbolic links are entries of their own
    (never followed). Empty folders of our layout (``kv/``, ``parts/NNNNN/``) are ours."""

    def walk(d: Path, rel: str) -> tuple[bool, list[str]]:  # (holds something of ours, the user's entries)
        ours, entries = False, []
        for p in sorted(d.iterdir(), key=lambda q: q.name):
            r = rel + p.name
            if p.is_dir() and not p.is_symlink():
                inner, sub = walk(p, r + "/")
                if inner or _OUR_DIRS.match(r):  # one of our folders: the user's files in it one by one
                    ours = True
                    entries += sub
                else:  # a folder of the user's: carried whole
                    entries.append(r + "/")
            elif is_ours(r, recorded):
                ours = True
            else:
                entries.append(r)
        return ours, entries

    return sorted(walk(root, "")[1])


def _free_name(root: Path, rel: str, taken: set[str]) -> str:
    """``rel``, or ``stem.kept-N.suffix`` when the new run wrote a file of that name itself."""
    if rel not in taken and not (root / rel).exists() and not any(t.startswith(rel + "/") for t in taken):
        return rel
    head, _, name = rel.rpartition("/")
    stem, dot, suffix = name.partition(".")
    for n in itertools.count(1):
        cand = f"{head + '/' if head else ''}{stem}.kept-{n}{dot}{suffix}"
        if cand not in taken and not (root / cand).exists():
            return cand
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------
# Reading tables: the one implementation behind RunReader.table (and RunStore.read_table)
# ---------------------------------------------------------------------------------------------------------
def committed_parts(store: RunStore, t: schema.Table) -> list[str]:
    """The committed parts (``parts/NNNNN/<part>.parquet``) holding ``t``'s rows in an unfinished run; empty for
    a complete run (its parts were merged) or a table never written in parts."""
    if t.part is None or store.manifest.status == STATUS_COMPLETE:
        return []
    files = store.manifest.files
    marks = sorted(r for r in files if r.startswith(schema.PARTS_DIR) and r.endswith("/" + schema.TRACES.part_path))
    return [p for p in (m.rsplit("/", 1)[0] + "/" + t.part_path for m in marks) if p in files]


def read_table(
    store: RunStore,
    table: str | schema.Table,
    *,
    trace: str | None = None,
    traces: Any = None,
    columns: Any = None,
    filters: Any = None,
    what: str | None = None,
    verify: Callable[[str], Path] | None = None,
) -> pd.DataFrame:
    """Rows of a run table (a :class:`~.schema.Table`, its name, or any recorded Parquet path): the merged file,
    else an unfinished run's committed parts; all rows, one ``trace`` or several ``traces`` (Parquet row
    filters); checked against the table's schema. RunError naming the file when the run lacks it.

    ``verify``: the checksum check (RunReader passes its once-per-file cache; default: every read)."""
    import pyarrow.parquet as pq

    verify = verify or store.verify_file
    if isinstance(table, schema.Table):
        t, rel = table, table.path
    elif table in schema.TABLES:
        t = schema.TABLES[table]
        rel = t.path
    else:
        t, rel = _table_of(table), table
    files = store.manifest.files
    rels = [rel] if rel in files else (committed_parts(store, t) if t is not None and rel == t.path else [])
    if not rels:
        if t is None or rel != t.path:
            verify(rel)  # raises RunError naming the file
        hint = " (the run is incomplete)" if store.manifest.status != STATUS_COMPLETE else ""
        raise RunError(f"{store.path / rel}: missing{hint}; this run has no {what or t.name + ' table'}")
    if trace is not None:
        filters = [("trace", "==", trace)]
    elif traces is not None:
        filters = [("trace", "in", sorted(set(traces)))]
    frames = []
    for r in rels:
        full = verify(r)
        try:
            frames.append(pq.read_table(full, columns=list(columns) if columns else None, filters=filters).to_pandas())
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise CorruptFile(f"{full}: unreadable Parquet ({exc})") from None
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return t.check(df, store.path / rel, columns) if t is not None else df


def _table_of(rel: str) -> schema.Table | None:
    return schema.table_at(rel)


__all__ = [
    "MANIFEST",
    "STATUS_COMPLETE",
    "STATUS_INCOMPLETE",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "Manifest",
    "RunStore",
    "RunError",
    "CorruptFile",
    "UnsafePath",
    "atomic_write_bytes",
    "atomic_write_via",
    "check_relative",
    "resolve_inside",
    "read_manifest",
    "first_difference",
    "dumps",
    "json_rows",
    "read_table",
    "committed_parts",
    "is_ours",
    "user_entries",
]
