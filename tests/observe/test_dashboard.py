"""The dashboard in a real headless browser: Playwright driving Debian's chromium.

Screenshots of every page go to the test's temporary directory. Without ``/usr/bin/chromium`` the
tests are skipped, unless ``FLOWSTATE_BROWSER_REQUIRED`` is set (CI sets it: ``.ci/run`` installs
the browser)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowstate.observe.commands import ui

from tests.observe.jobs import Running, SlowSink, keyed_count

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists() and not os.environ.get("FLOWSTATE_BROWSER_REQUIRED"):
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()


def test_a_running_jobs_page_shows_its_graph_and_a_completed_checkpoint_within_seconds(
        page: Page, tmp_path: Path) -> None:
    job = Running(keyed_count(10**9, rate=3_000), tmp_path / "chk", executor="threads", interval=0.5)
    try:
        page.goto(job.url)
        vertices = page.locator("[data-testid=vertex]")
        expect(vertices).to_have_count(2)
        expect(vertices.nth(0)).to_contain_text("0-source ×2")
        expect(vertices.nth(1)).to_contain_text("1-keyed_process ×2")
        completed = page.locator("[data-testid=checkpoint][data-status=completed]")
        expect(completed.first).to_be_visible(timeout=5_000)
        expect(vertices.nth(1)).to_contain_text("rec/s in", timeout=5_000)
        # Opening a checkpoint shows its subtasks; the live refresh keeps it open.
        cid = completed.first.get_attribute("data-id")
        subtasks = page.locator(f"#sub-{cid} table.subtasks")
        expect(subtasks).to_be_hidden()
        page.locator(f"#chk-{cid} summary").click()
        expect(subtasks).to_contain_text("1-keyed_process#1")
        expect(subtasks).to_be_visible()
        page.wait_for_timeout(1_500)
        expect(subtasks).to_be_visible()
        # Checkpoint now: refused without the token, served with it.
        page.click("text=Checkpoint now")
        expect(page.locator("#trigger-result")).to_contain_text("refused", timeout=10_000)
        page.fill("#token", job.runner.observer.server._server.token)
        page.click("text=Checkpoint now")
        expect(page.locator("#trigger-result")).to_contain_text("completed", timeout=10_000)
        expect(page.locator("[data-testid=chart-duration] polyline")).to_have_count(1, timeout=5_000)
        page.screenshot(path=str(tmp_path / "running.png"), full_page=True)
    finally:
        job.stop()


def test_a_declined_checkpoint_shows_its_reason(page: Page, tmp_path: Path) -> None:
    flow = keyed_count(10**9, rate=20_000, sink=SlowSink(0.0003))
    job = Running(flow, tmp_path / "chk", executor="threads", mode="unaligned", interval=0.3, max_inflight_bytes=2_000)
    try:
        page.goto(job.url)
        failed = page.locator("[data-testid=checkpoint][data-status=failed]").first
        expect(failed).to_be_visible(timeout=10_000)
        expect(failed.locator(".failure")).to_contain_text("exceeded the configured bound (max_inflight_bytes)")
        expect(failed.locator(".decline")).to_contain_text("declined: more than 2,000 bytes in flight")
        expect(page.locator("[data-testid=doctor] [data-rule=failing]")).to_contain_text("--max-inflight-bytes",
                                                                                          timeout=10_000)
        page.screenshot(path=str(tmp_path / "declined.png"), full_page=True)
    finally:
        job.stop()
    # The job is over: `flowstate ui` shows what it left on disk.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = threading.Event()
    server = threading.Thread(target=ui, args=(str(tmp_path / "chk"), "127.0.0.1", port, stop), daemon=True)
    server.start()
    try:
        page.wait_for_timeout(300)
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("[data-testid=state]")).to_have_text("stopped")
        expect(page.locator("[data-testid=vertex]")).to_have_count(2)
        expect(page.locator("[data-testid=checkpoint][data-status=failed]").first).to_contain_text("max_inflight_bytes")
        expect(page.locator("[data-testid=checkpoint][data-status=completed]").first).to_contain_text("(final)")
        expect(page.locator("text=Checkpoint now")).to_have_count(0)
        page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
    finally:
        stop.set()
        server.join(10)
