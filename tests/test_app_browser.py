"""End to end: `memento-lens app FIXTURE_RUN --port P` on 127.0.0.1, every page opened in headless Debian
chromium through playwright; each page's main chart renders without an exception; `/runs` is a page; a click
on a query row of the attention heatmap opens that query; the Attention page's screenshot at the README's size
is taken (into docs/screenshots/attention.png, which the README shows, when MEMENTO_LENS_UPDATE_SCREENSHOTS is
set)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from memento_lens.app.fixtures import FixtureSpec, write_fixture_run
from memento_lens.app.screenshots import README_SIZE

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
# Set to write the README's screenshot into docs/screenshots (otherwise it goes to the test's tmp_path, so a
# test run leaves the tracked picture alone).
UPDATE_SCREENSHOTS = "MEMENTO_LENS_UPDATE_SCREENSHOTS"
# Resolves once the element's box has not moved for 10 animation frames (a condition, not a sleep).
STILL_FOR_10_FRAMES = """(selector) => new Promise((resolve) => {
  let last = null, still = 0;
  const tick = () => {
    const el = document.querySelector(selector);
    if (el) {
      const b = el.getBoundingClientRect();
      const key = [b.x, b.y, b.width, b.height].join();
      still = key === last ? still + 1 : 0;
      last = key;
      if (still >= 10) return resolve(true);
    }
    requestAnimationFrame(tick);
  };
  tick();
})"""

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
# url path -> CSS selector of the page's main chart
PAGES = {
    "runs": ".js-plotly-plot",
    "trace": ".js-plotly-plot",
    "attention": ".js-plotly-plot",
    "residue": ".js-plotly-plot .heatmaplayer, .js-plotly-plot",
    "probes": ".js-plotly-plot",
    "figures": "[data-testid='stImage'] img",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("memento-lens")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "memento_lens.cli"]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)  # polling a server start, not a timed assertion
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def start_app(run: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*cli(), "app", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.browser
def test_every_page_renders_in_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    # every query of one trace captured: the attention heatmap is the full query x key pattern
    run = write_fixture_run(tmp_path / "run", FixtureSpec(n_traces=3, attention_traces=1, attention_queries=400))
    port = free_port()
    proc = start_app(run, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        # bound to loopback only
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
        if out:
            assert f"127.0.0.1:{port}" in out and f"0.0.0.0:{port}" not in out
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                pg = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                pg.on("pageerror", lambda e: errors.append(str(e)))
                for path, selector in PAGES.items():
                    pg.goto(f"{url}/{'' if path == 'runs' else path}", wait_until="domcontentloaded")  # runs is /
                    pg.wait_for_selector(selector, timeout=60_000)
                    assert pg.locator("[data-testid='stException']").count() == 0, f"exception on /{path}"
                    assert pg.locator("[data-testid='stAlertContentError']").count() == 0, f"error on /{path}"
                    assert pg.get_by_text("Page not found").count() == 0, f"/{path} is not a page"
                pg.goto(f"{url}/runs", wait_until="domcontentloaded")  # the Runs page by name, too
                pg.wait_for_selector(".js-plotly-plot", timeout=60_000)
                assert pg.get_by_text("Page not found").count() == 0, "/runs is not a page"
                assert pg.locator("h1").first.inner_text().strip() == "Runs"
                # attention: a click on a query row's handle opens that query in the single-query view
                pg.set_viewport_size({"width": README_SIZE[0], "height": README_SIZE[1]})
                pg.goto(f"{url}/attention", wait_until="domcontentloaded")
                handles = pg.locator(".js-plotly-plot").first.locator(".scatterlayer .points path")
                handles.first.wait_for(timeout=60_000)
                picker = pg.locator("input[aria-label='Query token']")
                before = picker.input_value()
                # plotly's first layout transition moves the handles: wait until one stays put for 10 frames
                pg.wait_for_function(
                    STILL_FOR_10_FRAMES, arg=".js-plotly-plot .scatterlayer .points path", timeout=30_000
                )
                shots = SCREENSHOTS if os.environ.get(UPDATE_SCREENSHOTS) else tmp_path
                shots.mkdir(parents=True, exist_ok=True)
                pg.screenshot(path=str(shots / "attention.png"))
                assert (shots / "attention.png").stat().st_size > 10_000  # a real picture, at the README's size
                bb = handles.nth(2).bounding_box()
                pg.mouse.move(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2)
                pg.mouse.click(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2)
                pg.wait_for_function(
                    f"() => document.querySelector(\"input[aria-label='Query token']\").value !== {before!r}",
                    timeout=30_000,
                )
                assert picker.input_value().split(":")[0] != before.split(":")[0]
                pg.set_viewport_size({"width": 1400, "height": 1000})
                # linked charts: a click on the token strip moves the step slider there
                pg.goto(f"{url}/trace", wait_until="domcontentloaded")
                pg.wait_for_selector(".js-plotly-plot .nsewdrag", timeout=60_000)
                thumb = pg.locator("[data-testid='stSliderThumbValue']")
                before = int(thumb.inner_text())
                box = pg.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
                pg.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
                pg.wait_for_function(
                    f"() => document.querySelector(\"[data-testid='stSliderThumbValue']\").innerText !== '{before}'",
                    timeout=30_000,
                )
                assert int(thumb.inner_text()) < before
                assert not errors, errors
            finally:
                browser.close()
    finally:
        stop(proc)
