"""Hypothesis fuzzing of every reader and of ``schedule``: any bytes or JSON give a result or a
:class:`MementoLensError` naming the file (never another exception), and never touch other files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memento_lens.runtime.errors import MementoLensError

from .badinput_harness import BE, SE, B, S, snapshot

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.lists(st.sampled_from(["a", " ", B, BE, S, SE, "é", "\n"]), max_size=8).map("".join),
)
json_values = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)
FIELDS = ["trace", "token_ids", "prompt_len", "segments", "type", "block_idx", "text", "prompt", "token_ids"]
objects = st.dictionaries(st.sampled_from(FIELDS + ["outputs", "problem", "generated_text"]), json_values, max_size=6)
segments = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["block", "summary", "answer", "x"]), "block_idx": json_leaf, "text": json_leaf}
    ),
    max_size=5,
)


def _check(fn, path: Path, root: Path) -> None:
    """``fn(path)`` returns, or raises a MementoLensError whose message names the file; nothing else changes."""
    before = snapshot(root)
    try:
        fn(path)
    except MementoLensError as exc:
        assert str(path) in str(exc) or path.name in str(exc), str(exc)
    after = snapshot(root)
    assert after == before


def _ingest(fmt: str):
    from memento_lens.analyses.ingest import ingest_file

    return lambda p: ingest_file(p, fmt=fmt, strict=True)


def _replay_reader(p: Path):
    from memento_lens.cli_runtime import _read_traces

    return _read_traces(p)


def _prompts_reader(p: Path):
    from memento_lens.cli_runtime import _read_prompts

    return _read_prompts(p)


READERS = {
    "vllm-jsonl": (".jsonl", _ingest("vllm-jsonl")),
    "memento-json": (".json", _ingest("memento-json")),
    "replay-jsonl": (".jsonl", _replay_reader),
    "prompts": (".txt", _prompts_reader),
}


def _write(root: Path, name: str, data: bytes) -> Path:
    p = root / name
    p.write_bytes(data)
    return p


@SETTINGS
@given(data=st.binary(max_size=200), which=st.sampled_from(sorted(READERS)))
def test_readers_on_random_bytes(data, which):
    suffix, fn = READERS[which]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = _write(root, "in" + suffix, data)
        _check(fn, p, root)


@SETTINGS
@given(rows=st.lists(objects, max_size=4), which=st.sampled_from(sorted(READERS)))
def test_readers_on_random_json_lines(rows, which):
    suffix, fn = READERS[which]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = _write(root, "in" + suffix, "\n".join(json.dumps(r) for r in rows).encode())
        _check(fn, p, root)


@SETTINGS
@given(segs=segments, problem=json_leaf)
def test_memento_json_on_random_segments(segs, problem):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = _write(root, "m.json", json.dumps({"problem": problem, "segments": segs}).encode())
        _check(_ingest("memento-json"), p, root)


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(["id", "problem", "response", "blocks"]), json_leaf), max_size=3))
def test_openmementos_on_random_rows(rows):
    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = root / "om.parquet"
        try:
            pd.DataFrame(rows).to_parquet(p)
        except Exception:  # pandas/pyarrow cannot store this mix of types: nothing to fuzz
            return
        _check(_ingest("openmementos"), p, root)


@SETTINGS
@given(data=st.binary(max_size=120))
def test_openmementos_on_random_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _check(_ingest("openmementos"), _write(root, "om.parquet", b"PAR1" + data), root)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_manifest_reader_on_random_bytes(data):
    from memento_lens.runtime.rundir.reader import open_run

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        run = root / "run"
        run.mkdir()
        (run / "manifest.json").write_bytes(data)
        _check(lambda p: open_run(p), run, root)


@SETTINGS
@given(manifest=objects | st.dictionaries(st.sampled_from(["files", "status", "kind", "schema_version"]), json_values))
def test_manifest_reader_on_random_json(manifest):
    from memento_lens.runtime.rundir.reader import open_run

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        run = root / "run"
        run.mkdir()
        (run / "manifest.json").write_text(json.dumps(manifest))
        _check(lambda p: open_run(p), run, root)


@SETTINGS
@given(case=json_values | objects)
def test_schedule_on_random_json(case):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["schedule"], input=json.dumps(case))
    assert res.exit_code in (0, 2), res.output
    if res.exit_code == 2:
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception


ids = st.lists(st.integers(0, 12), max_size=24)


@SETTINGS
@given(
    prompt=st.lists(st.integers(0, 12), max_size=4),
    generated=ids,
    keep=st.integers(-1, 3),
    mask=st.booleans(),
    restart=st.booleans(),
)
def test_schedule_on_random_streams(prompt, generated, keep, mask, restart):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    case = {
        "config": {"mask_delimiters": mask, "keep_last_n_blocks": keep, "restart_mode": restart},
        "token_ids": {"block_start": 1, "block_end": 2, "summary_start": 3, "summary_end": 4},
        "prompt": prompt,
        "generated": generated,
    }
    res = CliRunner().invoke(app, ["schedule", "--json"], input=json.dumps(case))
    assert res.exit_code == 0, res.output
    events = json.loads(res.stdout)
    n = len(prompt) + len(generated)
    for e in events:  # every event lies inside the stream
        assert 0 <= e["position"] < n and 0 <= e["start"] <= e["end"] <= n
