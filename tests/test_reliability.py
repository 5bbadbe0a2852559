"""Reliability: SIGKILL at random moments then --resume equals an uninterrupted run; same seed, same
results; corrupted files are named, never loaded silently wrong."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from memento_lens.runtime.rundir import KVReader
from memento_lens.runtime.rundir.store import CorruptFile, RunStore

CLI = [sys.executable, "-m", "memento_lens.cli"]
TABLES = ["traces.parquet", "tokens.parquet", "events.parquet", "occupancy.parquet"]


def generate_cmd(out: Path, prompts: Path, *extra: str) -> list[str]:
    return [
        *CLI,
        "generate",
        "--model",
        "random:toy",
        "--prompts-file",
        str(prompts),
        "--keep-delimiters",
        "--max-new-tokens",
        "60",
        "--batch-size",
        "2",
        "--capture",
        "--evicted-block",
        "--seed",
        "7",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = RunStore.open(a, require_complete=True), RunStore.open(b, require_complete=True)
    for table in TABLES:
        left = ra.read_table(table).sort_values(list(ra.read_table(table).columns[:2])).reset_index(drop=True)
        right = rb.read_table(table).sort_values(list(left.columns[:2])).reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right, obj=table)
    ka, kb = KVReader(ra), KVReader(rb)
    keys = sorted(ka.keys(), key=repr)
    assert keys == sorted(kb.keys(), key=repr) and keys
    for key in keys:
        (k1, v1), (k2, v2) = ka.get(key), kb.get(key)
        assert torch.equal(k1, k2) and torch.equal(v1, v2), key


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([[1]] * 12))  # 12 toy prompts (<bos>), 6 batches -> 6 resumable parts
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, prompts):
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run(generate_cmd(ref, prompts), check=True, capture_output=True)
    duration = time.perf_counter() - t0
    rng = random.Random(20261124)
    for attempt in range(2):
        out = tmp_path / f"killed-{attempt}"
        proc = subprocess.Popen(generate_cmd(out, prompts), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, 0.9) * duration)  # a random moment of the run
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no cleanup, maybe mid-write
            proc.wait()
        if out.exists() and (out / "manifest.json").exists():
            manifest = json.loads((out / "manifest.json").read_text())
            if manifest["status"] != "complete":
                with pytest.raises(Exception):
                    RunStore.open(out, require_complete=True)
        resumed = subprocess.run(generate_cmd(out, prompts, "--resume"), capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert_same_run(ref, out)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_same_seed_same_run(tmp_path, prompts):
    for name in ("a", "b"):
        subprocess.run(generate_cmd(tmp_path / name, prompts), check=True, capture_output=True)
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_corrupt_kv_shard_is_named_not_loaded(tmp_path):
    store = RunStore.create(tmp_path / "run", kind="generate", config={})
    path = store.write_tensors("kv/shard-00000.safetensors", {"k": torch.randn(1, 2, 5, 4)})
    store.mark_complete()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the last value
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFile, match=r"kv/shard-00000\.safetensors.*checksum"):
        RunStore.open(tmp_path / "run", verify=False).read_tensors("kv/shard-00000.safetensors")
