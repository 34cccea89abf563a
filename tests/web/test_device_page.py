"""The device page in Chromium against a real API and gateway: prefetch, then a trigger shown
from the cache with no request; the title page moving into the player; recovery after the
network drops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from web.conftest import WAIT_MS, Hopcast

MEMBER = "profile:0-0"


def _state(page: Any, expr: str) -> Any:
    return page.evaluate(f"() => {{ const d = window.hopcastDevice; return d && ({expr}); }}")


def open_device(context: Any, hopcast: Hopcast, event: str, *, hash: str = "") -> Any:
    """Open the device page and wait until it is connected and holds ``event``'s payloads."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{hopcast.base}/web/device.html?member={MEMBER}{hash}")
    page.wait_for_function(
        f"""() => {{
            const d = window.hopcastDevice;
            return d && d.status === "open"
                && (d.prefetched[{event!r}] || []).includes("live")
                && d.cacheKeys.includes({event + "/live"!r})
                && d.artworkKeys.includes("art/live/{event}/live.jpg");
        }}""",
        timeout=WAIT_MS,
    )
    return page


def test_the_trigger_shows_the_live_badge_and_new_artwork_with_no_request(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    hopcast.create_event("final", "The Final", starts_at="10m")
    page = open_device(context, hopcast, "final")
    page.wait_for_selector("#hero[data-stage=prefetch]")
    assert page.locator("#live-badge").count() == 0
    assert page.get_attribute("#hero", "data-art") == "art/live/final/upcoming.jpg"
    page.screenshot(path=str(artifacts / "device-before.png"))

    # The page refreshes the schedule every ~10 s (a delay is not broadcast); start right after
    # a refresh so the window below is the trigger's alone.
    refreshes = _state(page, "d.refreshes")
    page.wait_for_function(f"() => window.hopcastDevice.refreshes > {refreshes}", timeout=WAIT_MS)
    reported = _state(page, "d.reports.sent + d.reports.failed")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    started = time.monotonic()
    hopcast.command("final", "start")
    page.wait_for_selector("#hero[data-stage=live] #live-badge", state="visible")
    page.wait_for_selector("#hero[data-art='art/live/final/live.jpg'][data-transitions='1']")
    page.wait_for_timeout(300)  # anything the render would have started is on its way by now
    window_s = time.monotonic() - started
    assert requests == [], f"requests while showing the trigger: {requests}"
    assert window_s < 8, "the window must end before the next schedule refresh could start"

    applied = _state(page, "d.triggers[d.triggers.length - 1]")
    assert applied["event"] == "final" and applied["stage"] == "live"
    assert applied["source"] == "trigger" and applied["fromCache"] is True
    assert _state(page, "d.client.fallbackFetches") == 0
    # the rows now come from the live payload: the event's tile carries the Live badge
    assert page.locator(".row .tile[data-id='live:final'] .badge.live").count() == 1
    page.wait_for_timeout(1000)  # the artwork transition settles
    page.screenshot(path=str(artifacts / "device-live.png"))
    # the telemetry the dashboard needs follows later, batched: a report, and nothing else
    page.wait_for_function(
        "n => window.hopcastDevice.reports.sent + window.hopcastDevice.reports.failed > n",
        arg=reported,
    )
    assert requests[0] == f"POST {hopcast.base}/v1/console/reports", requests
    assert page.errors == []
