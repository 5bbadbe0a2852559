"""The bad-input suite's harness (imported by its conftest and cases): run a command in-process, record the error class the CLI reported, and
prove nothing on disk changed.

Every case asserts (1) exit code 2 with one ``error: ...`` line on stderr and no traceback, (2) the class of the
:class:`MementoLensError` the command raised, (3) that the message names the culprit, and (4) that the working
directory (inputs, user files, any output path) is byte-for-byte what it was before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from typer.testing import CliRunner

B, BE, S, SE = "<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>"
# random:tiny ids: 0 <bos>, 1..4 the memento tokens, 5 <eos>, 6.. words (vocab 64, 2 layers, 2 KV heads)
GOOD_IDS = [0, 1, 7, 8, 2, 3, 9, 4, 10]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> sha256 of its bytes (``dir`` for directories, target for links)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = "link:" + os.readlink(p) if p.is_symlink() else "dir"
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link:" + os.readlink(p)
            else:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    exit_code: int
    stderr: str
    stdout: str
    error: BaseException | None  # the MementoLensError (or refused write) the CLI turned into a message
    exception: BaseException | None  # anything that escaped (a bug)


def make_cli(monkeypatch) -> Callable[..., Outcome]:
    """Run ``memento-lens ARGS`` in-process; records the exception ``user_errors`` reported."""
    import memento_lens.errors as errors_mod
    from memento_lens.cli import app

    seen: list[BaseException] = []
    real_fail = errors_mod._fail

    def record(exc: BaseException) -> None:
        seen.append(exc)
        real_fail(exc)

    monkeypatch.setattr(errors_mod, "_fail", record)
    runner = CliRunner()

    def run(args: list[str], input: str | None = None) -> Outcome:
        seen.clear()
        res = runner.invoke(app, [str(a) for a in args], input=input)
        exc = res.exception if not isinstance(res.exception, SystemExit) else None
        return Outcome(res.exit_code, res.stderr, res.stdout, seen[-1] if seen else None, exc)

    return run


def assert_rejected(out: Outcome, cls: type, *culprits: str) -> None:
    """Exit 2, one ``error:`` line naming every culprit, the expected class, no traceback."""
    assert out.exception is None, f"escaped exception (a bug): {out.exception!r}"
    assert out.exit_code == 2, (out.exit_code, out.stderr, out.stdout)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    assert isinstance(out.error, cls), f"expected {cls.__name__}, got {type(out.error).__name__}: {out.error}"
    for c in culprits:
        assert c in lines[0], f"message does not name {c!r}: {lines[0]}"


def run_case(cli, root: Path, args: list[Any], cls: type, *culprits: str, input: str | None = None) -> Outcome:
    """Snapshot ``root``, run, assert rejected and that nothing under ``root`` changed."""
    before = snapshot(root)
    out = cli([str(a) for a in args], input=input)
    assert_rejected(out, cls, *culprits)
    assert snapshot(root) == before, "the failed command changed files on disk"
    return out


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def seg(kind: str, idx: Any, text: str) -> dict:
    return {"type": kind, "block_idx": idx, "text": text}


def memento_obj(**over: Any) -> dict:
    obj = {
        "problem": "q",
        "segments": [seg("block", 1, "w6 w7"), seg("summary", 1, "w8"), seg("answer", 0, "w9")],
    }
    obj.update(over)
    return obj


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def edit_manifest(run: Path, fn: Callable[[dict], None]) -> None:
    m = run / "manifest.json"
    data = json.loads(m.read_text())
    fn(data)
    m.write_text(json.dumps(data))


def cases(rows: list[tuple]) -> list:
    """``(args, error class, *culprits)`` rows -> pytest params ``(args, cls, culprits)`` named by their args."""
    import pytest

    return [pytest.param(r[0], r[1], tuple(r[2:]), id=" ".join(map(str, r[0])) or "none") for r in rows]
