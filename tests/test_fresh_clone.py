"""Fresh-machine check: clone the committed repository, run the README's set-up in a new virtual
environment, then the demo without the app. A missing install step cannot hide behind this checkout's
prepared .venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_clone_setup_and_demo(tmp_path):
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("git and make are needed for the fresh-clone check")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    setup = subprocess.run(["make", "setup"], cwd=clone, env=env, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    out = tmp_path / "demo-run"
    demo = subprocess.run(
        [str(clone / ".venv/bin/memento-lens"), "demo", "--no-app", "--out", str(out)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    for rel in [
        "manifest.json",
        "tokens.parquet",
        "events.parquet",
        "kv/index.parquet",
        "probe_results.parquet",
        "ablations.parquet",
    ]:
        assert (out / rel).exists(), f"demo run lacks {rel}"
    assert '"status": "complete"' in (out / "manifest.json").read_text()
