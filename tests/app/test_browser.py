"""The workbench in a real browser: `streamlit run app.py` on localhost, every page opened in
headless Chromium (Debian's package, driven by Playwright), a screenshot saved per page and the
time to each page's first paint recorded (reports/screenshots/paint.json).

Skipped where no Chromium is installed, unless AUDIT_REQUIRE_BROWSER=1 (set by .ci/run, which
installs it), so CI cannot pass by skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app.conftest import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("AUDIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("AUDIT_SCREENSHOTS", ROOT / "reports" / "screenshots"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# url path -> the page's title, and its main element (CSS), drawn once the page has run
PAGES = {
    "": ("Backbone", "button:has-text('Load backbone')"),
    "concepts": (
        "Concepts",
        "button:has-text('Build the probe report'), h2:has-text('Robustness scorecard')",
    ),
    "screening": ("Screening console", "textarea, button:has-text('Fit the default screens')"),
    "audit_log": ("Audit log", "h3:has-text('Chain verification'), [data-testid='stAlert']"),
    "tenants": ("Tenants", "[data-testid='stForm']"),
    "checkpoints": ("Checkpoints", "[data-testid='stAlert']"),
    "reports": ("Probe reports", ".js-plotly-plot"),
}


def _wait_until_drawn(page, main: str, timeout_s: float = 180) -> None:
    """Wait until the page's main element is visible and no spinner is left, for a second."""
    page.locator(main).first.wait_for(state="visible", timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        busy = page.locator('[data-testid="stSpinner"]').count() > 0
        now = time.monotonic()
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= 1.0:
            return
        page.wait_for_timeout(100)
    raise TimeoutError(f"the page at {page.url} still shows a spinner after {timeout_s} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("AUDIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package.")
        pytest.skip("no Chromium here (apt-get install chromium); .ci/run installs it")
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM


@pytest.fixture(scope="module")
def workbench_url(tmp_path_factory, screen_bank) -> str:
    """Start `streamlit run app.py` on localhost with a stored probe report and screen-eval report."""
    reports = tmp_path_factory.mktemp("browser-reports")
    shutil.copytree(ROOT / "reports" / "example", reports / "20260101T000000Z-toxicity")
    shutil.copytree(ROOT / "reports" / "example-screen-eval", reports / "screen-eval-minilm")
    port = _free_port()
    env = {**os.environ, "AUDIT_REPORTS": str(reports)}
    log = (tmp_path_factory.mktemp("browser-log") / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://localhost:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_every_page_renders_in_chromium(chromium_path, workbench_url) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    paint: dict[str, float] = {}  # until the page's title is visible
    ready: dict[str, float] = {}  # until its main element is drawn and no spinner is left
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for path, (title, main) in PAGES.items():
                started = time.perf_counter()
                page.goto(f"{workbench_url}/{path}")
                heading = page.locator("h1", has_text=title).first
                heading.wait_for(state="visible", timeout=120_000)
                paint[title] = round(time.perf_counter() - started, 3)
                _wait_until_drawn(page, main)
                ready[title] = round(time.perf_counter() - started, 3)
                name = path or "backbone"
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                exceptions = page.locator('[data-testid="stException"]').count()
                assert exceptions == 0, f"page {title!r} shows a traceback ({name}.png)"
        finally:
            browser.close()
    timings = {"first_paint_s": paint, "ready_s": ready}
    (SCREENSHOTS / "paint.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("page timings (s):", timings)
    assert set(paint) == {title for title, _ in PAGES.values()}
