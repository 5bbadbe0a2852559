"""scripts/gpu_check.sh (issue 17's GPU check; not run here: no GPU is lent): its syntax, and its CPU dry run,
which prints every step and runs the long-trace replay on a tiny shape through the same code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.integration


def test_syntax():
    assert shutil.which("bash")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_on_cpu(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "HOME": str(tmp_path)}
    r = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for step in ("verify_bf16", "verify_fp32", "verify_smollm2", "bench_real", "ray_gpu"):
        assert f"[dry-run] would run {step}" in r.stdout
    result = json.loads((tmp_path / "long_replay.log").read_text().strip().splitlines()[-1])
    assert result["tokens"] > 500 and result["captured_kv"] > 0  # it replayed, with capture, in both modes
    assert result["memento_peak_kv_tokens"] < result["vanilla_peak_kv_tokens"]  # blocks were evicted
