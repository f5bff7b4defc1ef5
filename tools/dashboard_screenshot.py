"""Take the README's screenshot of the dashboard (``docs/dashboard.png``): a job whose hot key
back-pressures its sources, after a few seconds of checkpoints, in headless chromium.

    .venv/bin/python tools/dashboard_screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flowstate as fs  # noqa: E402
from tests.observe.jobs import Running  # noqa: E402
from tests.observe.test_dashboard import ARGS, CHROMIUM  # noqa: E402


class Slow(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, record: str, ctx: fs.RuntimeContext) -> object:
        n = self.count.value() + 1
        self.count.update(n)
        sum(range(1500))
        yield (record, n)


def main() -> None:
    from playwright.sync_api import sync_playwright

    flow = fs.Dataflow("clicks", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: "hot" if i % 10 else f"user{i % 5000}", count=None, splits=2,
                                    rate=12_000), name="clicks")
         .map(lambda k: k.lower(), name="normalise")
         .key_by(lambda k: k).process(Slow(), name="count")
         .sink(lambda r: None, name="dashboard-feed"))
    with tempfile.TemporaryDirectory() as directory:
        job = Running(flow, Path(directory) / "chk", executor="processes", workers=2, interval=1.0, batch_size=512)
        try:
            time.sleep(9)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1180})
                page.goto(job.url)
                page.wait_for_timeout(2500)
                newest = page.locator("[data-testid=checkpoint][data-status=completed]").first.get_attribute("data-id")
                page.locator(f"#chk-{newest} summary").click()
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=False)
                browser.close()
        finally:
            job.stop()


if __name__ == "__main__":
    main()
