"""The device page in Chromium against a real API and gateway: prefetch, then a trigger shown
from the cache with no request; the title page moving into the player; recovery after the
network drops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from web.pages import (
    WAIT_MS,
    Hopcast,
    Ports,
    assert_no_placeholders,
    device_state,
    open_device,
    running_hopcast,
)

#: A real browser and server per test, a few seconds each: kept out of `make check`.
pytestmark = pytest.mark.slow
#: The schedule refresh period the trigger test gives the page: its window without a refresh
#: (at least 80% of it) leaves a loaded machine ample time to render the trigger.
REFRESH_S = 30


def test_the_trigger_shows_the_live_badge_and_new_artwork_with_no_request(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    hopcast.create_event("final", "The Final", starts_at="10m")
    page = open_device(context, hopcast, "final", hash=f"&refresh={REFRESH_S}")
    page.wait_for_selector("#hero[data-stage=prefetch]")
    assert page.locator("#live-badge").count() == 0
    assert page.get_attribute("#hero", "data-art") == "art/live/final/upcoming.jpg"
    page.screenshot(path=str(artifacts / "device-before.png"))
    assert_no_placeholders(page)

    # The page refreshes the schedule every REFRESH_S ±20% (a delay is not broadcast) and
    # reports its prefetch a few seconds after the fact; start once the report is out and
    # right after a refresh, so the window below is the trigger's alone.
    page.wait_for_function(
        "() => window.hopcastDevice.reports.sent + window.hopcastDevice.reports.failed > 0"
    )
    refreshes = device_state(page, "d.refreshes")
    page.wait_for_function(
        f"() => window.hopcastDevice.refreshes > {refreshes}",
        timeout=REFRESH_S * 1.2 * 1000 + WAIT_MS,
    )
    refreshes = device_state(page, "d.refreshes")
    reported = device_state(page, "d.reports.sent + d.reports.failed")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    hopcast.command("final", "start")
    page.wait_for_selector("#hero[data-stage=live] #live-badge", state="visible")
    page.wait_for_selector("#hero[data-art='art/live/final/live.jpg'][data-transitions='1']")
    page.wait_for_timeout(300)  # anything the render would have started is on its way by now
    # the window is the trigger's alone: no schedule refresh fell into it
    assert device_state(page, "d.refreshes") == refreshes
    assert requests == [], f"requests while showing the trigger: {requests}"

    applied = device_state(page, "d.triggers[d.triggers.length - 1]")
    assert applied["event"] == "final" and applied["stage"] == "live"
    assert applied["source"] == "trigger" and applied["fromCache"] is True
    assert device_state(page, "d.client.fallbackFetches") == 0
    # the rows now come from the live payload: the event's tile carries the Live badge
    assert page.locator(".row .tile[data-id='live:final'] .badge.live").count() == 1
    page.wait_for_timeout(1000)  # the artwork transition settles
    page.screenshot(path=str(artifacts / "device-live.png"))
    assert_no_placeholders(page)
    # the telemetry the dashboard needs follows later, batched: a report, and nothing else
    page.wait_for_function(
        "n => window.hopcastDevice.reports.sent + window.hopcastDevice.reports.failed > n",
        arg=reported,
    )
    assert requests[0] == f"POST {hopcast.base}/v1/console/reports", requests
    assert page.errors == []


def test_a_member_on_the_events_title_page_is_moved_into_the_player_at_go_live(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    hopcast.create_event("derby", "The Derby", starts_at="10m")
    page = open_device(context, hopcast, "derby", hash="#/title/live:derby")
    page.wait_for_selector("#detail[data-id='live:derby']")
    assert page.locator("#player").count() == 0
    page.screenshot(path=str(artifacts / "detail-before.png"))

    hopcast.command("derby", "start")
    page.wait_for_selector("#player[data-id='live:derby'] #live-badge", state="visible")
    assert page.evaluate("location.hash") == "#/play/live:derby"
    assert [a["event"] for a in device_state(page, "d.autoPlayed")] == ["derby"]
    assert device_state(page, "d.view") == "player"
    page.screenshot(path=str(artifacts / "player.png"))

    # an interruption and its resumption show in the player
    hopcast.command("derby", "interrupt")
    page.wait_for_selector("#player-interrupted", state="visible")
    hopcast.command("derby", "resume")
    page.wait_for_selector("#player-interrupted", state="detached")
    # an early end reaches the player too
    hopcast.command("derby", "end")
    page.wait_for_selector("#player-ended", state="visible")
    page.click("text=← Back")
    page.wait_for_selector("#hero[data-stage=ended] #ended-badge")
    assert page.locator("#live-badge").count() == 0
    assert page.locator(".row h2", has_text="Highlights").count() == 1
    assert page.errors == []


def test_an_early_end_removes_the_badge_on_the_home_screen(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    hopcast.create_event("gala", "The Gala", starts_at="10m")
    page = open_device(context, hopcast, "gala")
    hopcast.command("gala", "start")
    page.wait_for_selector("#hero[data-stage=live] #live-badge")
    hopcast.command("gala", "end")
    page.wait_for_selector("#hero[data-stage=ended] #ended-badge")
    assert page.locator("#live-badge").count() == 0
    assert page.text_content("#countdown") == "Ended"
    assert page.get_attribute("#hero", "data-art") == "art/live/gala/ended.jpg"
    page.screenshot(path=str(artifacts / "ended.png"))
    # browsing on: a tile opens its title page, Play opens the player, Back returns home
    tile = page.locator(".row .tile").last
    title_id = tile.get_attribute("data-id")
    tile.click()
    page.wait_for_selector(f"#detail[data-id='{title_id}']")
    page.click("#play")
    page.wait_for_selector(f"#player[data-id='{title_id}']")
    page.click("text=← Back")
    page.wait_for_selector("#hero[data-stage=ended]")
    assert page.errors == []


def test_the_page_recovers_after_the_network_drops_and_gets_the_next_stage(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    hopcast.create_event("cup", "The Cup", starts_at="10m")
    page = open_device(context, hopcast, "cup")
    page.wait_for_selector("#hero[data-stage=prefetch]")
    welcomes = device_state(page, "d.welcomes")
    reconnects = device_state(page, "d.reconnects")

    context.set_offline(True)
    # nothing arrives any more: after 2.5 heartbeats the page declares the connection dead
    page.wait_for_function("() => window.hopcastDevice.status !== 'open'")
    hopcast.command("cup", "start")  # broadcast while the device cannot hear it
    page.wait_for_timeout(1000)
    assert device_state(page, "d.stage") == "prefetch"
    page.screenshot(path=str(artifacts / "offline.png"))

    context.set_offline(False)
    page.wait_for_selector("#hero[data-stage=live] #live-badge")
    assert device_state(page, "d.welcomes") > welcomes
    assert device_state(page, "d.reconnects") > reconnects
    applied = device_state(page, "d.triggers[d.triggers.length - 1]")
    # the gateway replayed the missed trigger from the position the page resumed from
    assert applied["stage"] == "live" and applied["source"] == "trigger"
    assert applied["fromCache"] is True
    # and the next stage arrives over the new connection
    hopcast.command("cup", "end")
    page.wait_for_selector("#hero[data-stage=ended]")
    assert page.errors == []


def test_a_device_that_missed_the_prefetch_fetches_the_stage_once_after_a_jittered_delay(
    context: Any, hopcast: Hopcast
) -> None:
    hopcast.request(
        "POST", "/v1/live/events", {"id": "late", "title": "The Late One", "starts_at": "10m"}
    )
    page = context.new_page()
    # refresh=3600: the page does not re-read the events (and prefetch) during the test
    page.goto(f"{hopcast.base}/web/device.html?member=profile:0-0&refresh=3600")
    # nothing is published yet: the manifest answers 404 and the page has nothing cached
    page.wait_for_function("() => window.hopcastDevice && window.hopcastDevice.status === 'open'")
    page.wait_for_selector("#rows-empty")
    hopcast.request("POST", "/v1/live/events/late/materialise?wait=60", {"segments": []})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    hopcast.command("late", "start")
    # the stage shows at once; its rows follow the fallback fetch (within the 10 s window)
    page.wait_for_selector("#hero[data-stage=live] #live-badge")
    applied = device_state(page, "d.triggers[d.triggers.length - 1]")
    assert applied["stage"] == "live" and applied["fromCache"] is False
    page.wait_for_selector(".row h2:has-text('Watch now')", timeout=WAIT_MS)
    assert device_state(page, "d.client.fallbackFetches") == 1
    assert device_state(page, "d.cacheKeys").count("late/live") == 1
    fetched = [u for u in requests if "/v1/live/events/late/payload" in u]
    assert (
        len(fetched) == 1 and "stage=live" in fetched[0] and "segment=profile%3A0-0" in fetched[0]
    )


def test_the_page_comes_back_after_a_server_restart_with_a_new_secret_and_epoch(
    context: Any, tmp_path: Path, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    store = tmp_path / "restart-store"
    ports = Ports.reserve()  # the restarted server comes back on the same two ports
    request.addfinalizer(ports.close)
    with running_hopcast(store, ports) as first:
        first.create_event("final", "The Final", starts_at="10m")
        page = open_device(context, first, "final")
        token = device_state(page, "d.client.tokenRefreshes")
    # the server stops: the gateway says bye (restart) to the page, which waits and retries
    page.wait_for_function("() => window.hopcastDevice.status !== 'open'")
    with running_hopcast(store, ports) as second:
        # the schedule survived in the store; the event starts while the page is away
        second.command("final", "start")
        # back: the old token is refused (new secret) and replaced, the channel's history is
        # new (new epoch), so the page catches up from the gateway's state snapshot
        page.wait_for_selector("#hero[data-stage=live] #live-badge")
        assert device_state(page, "d.client.byes") >= 1
        assert device_state(page, "d.client.tokenRefreshes") > token
        applied = device_state(page, "d.triggers[d.triggers.length - 1]")
        assert applied["stage"] == "live" and applied["source"] == "state"
        assert applied["fromCache"] is True
        page.screenshot(path=str(artifacts / "after-restart.png"))
        # and the next trigger arrives live on the new connection
        second.command("final", "end")
        page.wait_for_selector("#hero[data-stage=ended]")
        assert device_state(page, "d.triggers[d.triggers.length - 1]")["source"] == "trigger"
    assert page.errors == []


def test_the_page_refreshes_its_short_lived_token_in_place_and_misses_no_stage(
    context: Any, hopcast: Hopcast
) -> None:
    hopcast.create_event("derby", "The Derby", starts_at="10m")
    # 2 s tokens: the gateway asks for a fresh one 1 s in, and closes at exp + 1 s without one
    page = open_device(context, hopcast, "derby", hash="&token_ttl=2s")
    page.wait_for_selector("#hero[data-stage=prefetch]")
    # three renewals: the first token's exp + leeway (3 s after it was issued) is long past
    page.wait_for_function("() => window.hopcastDevice.client.tokenRenewals >= 3")
    hopcast.command("derby", "start")
    page.wait_for_selector("#hero[data-stage=live] #live-badge")
    page.wait_for_function("() => window.hopcastDevice.client.tokenRenewals >= 4")
    hopcast.command("derby", "end")
    page.wait_for_selector("#hero[data-stage=ended]")
    stats = device_state(page, "d.client")
    # one connection throughout: refreshed in place, never closed for expiry
    assert (stats["connects"], stats["byes"], stats["reconnects"]) == (1, 0, 0), stats
    stages = [t["stage"] for t in device_state(page, "d.triggers") if t["event"] == "derby"]
    assert stages[-2:] == ["live", "ended"], stages
    assert page.errors == []


def test_before_the_prefetch_window_the_page_shows_no_null_or_undefined(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    """An event hours away (its prefetch window not open): the hero has no payload yet, and
    nothing on the page reads "null" or "undefined" (an absent synopsis once did)."""
    from web.pages import MEMBER

    hopcast.create_event("later", "The Later Final", starts_at="3h")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{hopcast.base}/web/device.html?member={MEMBER}")
    page.wait_for_selector("#hero[data-stage=scheduled] h1", timeout=WAIT_MS)
    page.wait_for_function(
        "() => (document.querySelector('#countdown') || {}).textContent?.startsWith('Starts in')",
        timeout=WAIT_MS,
    )
    page.screenshot(path=str(artifacts / "device-scheduled.png"))
    assert_no_placeholders(page)
    assert "The Later Final" in page.inner_text("body")
    assert errors == []


@pytest.mark.parametrize(("width", "height"), [(1400, 900), (390, 844)])
def test_the_status_line_covers_no_row_title_or_tile(
    context: Any, hopcast: Hopcast, artifacts: Path, width: int, height: int
) -> None:
    """The debug status line once floated over the rows' titles at desktop and phone widths:
    at both, it overlaps no row title, tile or hero text, and the page is no wider than the
    window."""
    hopcast.create_event("final", "The Final", starts_at="10m")
    page = open_device(context, hopcast, "final")
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_selector(".row .tile")
    hits = page.evaluate(
        """() => {
            const s = document.querySelector('#status').getBoundingClientRect();
            const meets = (r) => r.left < s.right && s.left < r.right
                && r.top < s.bottom && s.top < r.bottom;
            return [...document.querySelectorAll('.row h2, .row .tile, #hero .info > *')]
                .filter((e) => meets(e.getBoundingClientRect()))
                .map((e) => e.textContent.slice(0, 40));
        }"""
    )
    assert hits == [], f"the status line covers: {hits}"
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"
    page.screenshot(path=str(artifacts / f"device-{width}x{height}.png"), full_page=True)
    assert_no_placeholders(page)
    assert page.errors == []
