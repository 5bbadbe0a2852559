"""Screenshots of every app page for the docs: ``python -m memento_lens.app.screenshots RUN_DIR [OUT_DIR]``.

Starts ``memento-lens app RUN_DIR`` on a free loopback port, opens each page in headless Debian chromium
through playwright, waits for its main chart and writes ``OUT_DIR/<page>.png`` (default docs/screenshots).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
README_SIZE = (1500, 1900)  # viewport of the README's screenshots (width, height)
# page url path -> selector of its main chart
PAGES = {
    "runs": ".js-plotly-plot",
    "trace": ".js-plotly-plot",
    "attention": ".js-plotly-plot",
    "residue": ".js-plotly-plot",
    "probes": ".js-plotly-plot",
    "figures": "[data-testid='stImage'] img",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def take(run: Path, out: Path, width: int = README_SIZE[0], height: int = README_SIZE[1]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    exe = Path(sys.executable).with_name("memento-lens")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "memento_lens.cli"]
    proc = subprocess.Popen(
        [*cmd, "app", str(run), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    written = []
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": width, "height": height})
            for path, selector in PAGES.items():
                pg.goto(f"{url}/{'' if path == 'runs' else path}", wait_until="domcontentloaded")  # runs is /
                pg.wait_for_selector(selector, timeout=90_000)
                pg.wait_for_timeout(2500)  # let plotly finish its transitions before the picture
                dest = out / f"{path}.png"
                pg.screenshot(path=str(dest))
                written.append(dest)
            browser.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    return written


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: python -m memento_lens.app.screenshots RUN_DIR [OUT_DIR]")
    for f in take(Path(args[0]), Path(args[1] if len(args) > 1 else "docs/screenshots")):
        print(f)
