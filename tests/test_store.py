"""Run directories: refusal to clobber, resume, checksums that catch truncation and alteration."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from memento_lens.runtime.rundir.store import CorruptFile, RunError, RunStore


def make(tmp_path, **kw):
    return RunStore.create(tmp_path / "run", kind="generate", config={"seed": 1, "mode": "memento"}, **kw)


def test_roundtrip_and_complete(tmp_path):
    store = make(tmp_path)
    store.write_table("notes.parquet", pd.DataFrame({"trace": ["a", "a"], "pos": [0, 1]}))
    store.write_tensors("kv/shard-00000.safetensors", {"k": torch.arange(6.0).reshape(1, 1, 3, 2)})
    store.write_json("summary.json", {"x": 1})
    store.mark_complete(n_traces=1)
    again = RunStore.open(store.path, require_complete=True)
    assert again.read_table("notes.parquet")["pos"].tolist() == [0, 1]
    assert again.read_tensors("kv/shard-00000.safetensors")["k"].shape == (1, 1, 3, 2)
    assert again.read_json("summary.json") == {"x": 1}
    assert again.manifest.info["n_traces"] == 1


def test_refuses_other_run_without_overwrite(tmp_path):
    make(tmp_path)
    with pytest.raises(RunError, match="--overwrite"):
        RunStore.create(tmp_path / "run", kind="generate", config={"seed": 2})
    with pytest.raises(RunError, match="first difference: mode"):
        RunStore.create(tmp_path / "run", kind="generate", config={"seed": 2}, resume=True)
    fresh = RunStore.create(tmp_path / "run", kind="generate", config={"seed": 2}, overwrite=True)
    assert fresh.manifest.config == {"seed": 2} and fresh.manifest.files == {}


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a memento-lens run"):
        make(tmp_path)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_resume_keeps_recorded_files_and_drops_partial(tmp_path):
    store = make(tmp_path)
    store.write_table("a.parquet", pd.DataFrame({"x": [1]}))
    (store.path / ".b.parquet.0a1b2c3d.ml-tmp").write_bytes(b"half")  # killed mid-write
    resumed = make(tmp_path, resume=True)
    assert resumed.has("a.parquet")
    assert not (store.path / ".b.parquet.0a1b2c3d.ml-tmp").exists()
    assert not resumed.complete


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_checksum_names_damaged_file(tmp_path, damage):
    store = make(tmp_path)
    path = store.write_tensors("kv/shard-00000.safetensors", {"k": torch.ones(1, 2, 8, 4)})
    store.mark_complete()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-4] + b"\x00\x00\x00\x40")
    with pytest.raises(CorruptFile, match="shard-00000.safetensors"):
        RunStore.open(store.path)
    lazy = RunStore.open(store.path, verify=False)
    with pytest.raises(CorruptFile, match="checksum"):
        lazy.read_tensors("kv/shard-00000.safetensors")


def test_corrupt_manifest_is_named(tmp_path):
    store = make(tmp_path)
    (store.path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptFile, match="manifest.json"):
        RunStore.open(store.path)


def test_incomplete_run_refused_when_required(tmp_path):
    store = make(tmp_path)
    with pytest.raises(RunError, match="incomplete"):
        RunStore.open(store.path, require_complete=True)
    assert json.loads((store.path / "manifest.json").read_text())["status"] == "incomplete"


def test_capture_and_replay_do_not_import_each_other():
    """capture.py only captures; runs.py joins replay and writer (the old capture <-> replay cycle is gone)."""
    import subprocess
    import sys

    code = (
        "import sys, memento_lens.runtime.capture, memento_lens.runtime.rundir;"
        "print('memento_lens.runtime.replay' in sys.modules, 'memento_lens.runtime.runs' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    from pathlib import Path

    src = (Path(__file__).resolve().parents[1] / "runtime" / "replay.py").read_text()
    assert "from .capture import" not in src.split("if TYPE_CHECKING:")[0]  # only a type-checking import
