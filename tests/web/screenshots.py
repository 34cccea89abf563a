"""Take the README's screenshots from a running demo (``make demo``), in Debian's Chromium.

    .venv/bin/python tests/web/screenshots.py [http://127.0.0.1:8321] [docs/screenshots]

Opens the device page and the console, waits for the demo's scripted event to go live (the
device page shows the Live badge) and for the dashboard to hold its time-to-update CDF, then
saves ``device.png`` and ``console.png``. Not a test (pytest collects only ``test_*.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from web.pages import CHROMIUM, CHROMIUM_ARGS

MEMBER = "profile:3-0"
#: The demo's event goes live a few minutes after start; wait for it at most this long.
LIVE_WAIT_MS = 10 * 60 * 1000


def main(base: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        device = context.new_page()
        for _ in range(120):  # the demo serves once its history is loaded
            try:
                device.goto(f"{base}/web/device.html?member={MEMBER}")
                break
            except PlaywrightError:
                time.sleep(1)
        console = context.new_page()
        console.set_viewport_size({"width": 1280, "height": 1700})
        console.goto(f"{base}/web/console.html?node={MEMBER}")
        print("waiting for the live event to go live …", flush=True)
        device.wait_for_selector("#hero[data-stage=live] #live-badge", timeout=LIVE_WAIT_MS)
        time.sleep(1.5)  # the artwork transition settles
        device.screenshot(path=str(out / "device.png"))
        console.wait_for_function(
            "() => { const d = window.hopcastConsole.dashboard;"
            " return d && d.time_to_update && d.time_to_update.devices > 0; }",
            timeout=60_000,
        )
        time.sleep(6)  # a few more device reports and a graph drawn
        console.screenshot(path=str(out / "console.png"))
        browser.close()
    print(f"saved {out / 'device.png'} and {out / 'console.png'}")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8321",
        Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots"),
    )
