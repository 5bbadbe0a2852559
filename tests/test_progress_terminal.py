"""Progress as a user sees it: commands run in a real terminal (tmux) draw their bars with counts and ETA.

A pseudo-terminal that reports 0 columns, a bar written to stdout, or a bar that only appears at the end would all
fail here: the pane is captured after the command ends and must hold the finished bar on stderr, with the JSON
result on stdout kept out of the pane.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (make browser installs it)"),
]

CLI = str(Path(sys.executable).with_name("memento-lens"))


def run_in_tmux(command: str, tmp_path: Path, width: int = 120, height: int = 30) -> str:
    """Run ``command`` in a detached tmux pane of the given size; return the pane's text once it has finished.

    The pane signals completion with ``tmux wait-for`` (no polling, no sleeps) and then blocks on ``cat`` so its
    text can be captured before the session is killed.
    """
    name = f"ml-{uuid.uuid4().hex[:8]}"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"{command} > {tmp_path}/stdout.txt; echo rc=$?; tmux wait-for -S {name}; cat\n")
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), f"bash {script}"],
        check=True,
    )
    try:
        subprocess.run(["tmux", "wait-for", name], check=True, timeout=600)
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", name], check=True, capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], check=False)


def test_verify_draws_one_bar_with_eta_in_a_real_terminal(tmp_path):
    pane = run_in_tmux(f"{CLI} verify --model random:tiny --threads 1", tmp_path)
    assert "rc=0" in pane, pane
    # the finished tqdm bar: description, 100 %, done/total, elapsed<remaining
    assert re.search(r"verify[^\n]*100%[^\n]*\b(\d+)/\1 \[\d\d:\d\d<00:00", pane), pane
    assert '"passed": true' in (tmp_path / "stdout.txt").read_text()  # the JSON went to stdout, not the pane
    assert '"passed"' not in pane


def test_stage_bars_draw_one_row_per_stage(tmp_path):
    code = (
        "from memento_lens.runtime.progress import StageBars\n"
        "with StageBars() as bars:\n"
        "    for i in range(1, 4): bars('features normal', i, 3)\n"
        "    for i in range(1, 6): bars('probes', i, 5)\n"
    )
    (tmp_path / "stages.py").write_text(code)
    pane = run_in_tmux(f"{sys.executable} {tmp_path / 'stages.py'}", tmp_path)
    assert re.search(r"features normal[^\n]*100%[^\n]*3/3", pane), pane
    assert re.search(r"probes[^\n]*100%[^\n]*5/5", pane), pane
