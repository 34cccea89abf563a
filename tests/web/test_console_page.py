"""The operator console in Chromium: a delay clicked in the console reaches an open device page;
the dashboard, graph explorer and ingest panels draw what the console API answers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from web.pages import Hopcast, assert_no_placeholders, open_console, open_device

#: A real browser and server per test, a few seconds each: kept out of `make check`.
pytestmark = pytest.mark.slow

DELAY_US = 2 * 60 * 1_000_000


def test_a_delay_made_in_the_console_reaches_the_open_device_page(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    created = hopcast.create_event("final", "The Final", starts_at="10m")
    device = open_device(context, hopcast, "final")
    countdown = device.locator("#hero #countdown")
    assert int(countdown.get_attribute("data-starts-at")) == created["starts_at"]
    assert device.locator("#delay").count() == 0
    before = countdown.text_content()

    console = open_console(context, hopcast)
    row = console.locator("tr[data-event=final]")
    row.locator("input.delay").fill("2m")
    row.locator("button.delay-btn").click()
    console.wait_for_selector("tr[data-event=final] td.delay-cell:has-text('+2:00')")
    assert hopcast.event("final")["starts_at"] == created["starts_at"] + DELAY_US

    # the device page learns the new start time at its next schedule refresh (~10 s)
    device.wait_for_selector("#hero #delay", state="visible")
    moved = int(countdown.get_attribute("data-starts-at"))
    assert moved == created["starts_at"] + DELAY_US
    assert device.text_content("#delay") == "delayed 2:00"
    assert countdown.text_content() != before
    device.screenshot(path=str(artifacts / "device-delayed.png"))
    console.screenshot(path=str(artifacts / "console-delayed.png"), full_page=True)

    # the event then starts from the console; the device shows it live
    console.locator("tr[data-event=final] button.start-btn").click()
    device.wait_for_selector("#hero[data-stage=live] #live-badge")
    console.wait_for_selector("tr[data-event=final][data-state=live]")
    assert device.errors == [] and console.errors == []


def test_the_console_creates_an_event_and_its_dashboard_counts_the_device(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    console = open_console(context, hopcast)
    console.fill("#create input[name=id]", "opener")
    console.fill("#create input[name=title]", "The Opener")
    console.fill("#create input[name=starts_at]", "10m")
    console.click("#create button[type=submit]")
    console.wait_for_selector("tr[data-event=opener][data-state=prefetch]")
    assert hopcast.event("opener")["title"] == "The Opener"
    # created 10 minutes ahead, inside the 30-minute lead: it starts in prefetch, and says why
    why = console.inner_text("tr[data-event=opener] .why")
    assert why == "created less than 30 min before the start: the window opened at once", why
    assert "prefetch window is open" in console.get_attribute(
        "tr[data-event=opener] .state", "title"
    )

    device = open_device(context, hopcast, "opener")
    # the device's reports reach the dashboard: connected, prefetched
    console.wait_for_function(
        """() => {
            const d = window.hopcastConsole.dashboard;
            return d && d.devices.connected >= 1 && d.prefetch.devices >= 1;
        }""",
    )
    console.wait_for_selector("#m-coverage:has-text('100.0%')")
    console.locator("tr[data-event=opener] button.start-btn").click()
    device.wait_for_selector("#hero[data-stage=live] #live-badge")
    # the device reports its update a few seconds later; the CDF has its point
    console.wait_for_function(
        """() => {
            const d = window.hopcastConsole.dashboard;
            const t = d && d.time_to_update;
            return t && t.stage === "live" && t.devices >= 1;
        }""",
    )
    console.wait_for_selector("#m-ttu-sub:has-text('1 of 1 devices')")
    console.screenshot(path=str(artifacts / "console.png"), full_page=True)
    assert device.errors == [] and console.errors == []


def test_a_missing_console_endpoint_is_shown_in_its_panel(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    page = context.new_page()
    page.route("**/v1/console/ingest", lambda route: route.fulfill(status=404, body="Not Found"))
    page.goto(f"{hopcast.base}/web/console.html#key={hopcast.key}")
    page.wait_for_selector("#ingest-message:has-text('is not available on this server')")
    # the other panels carry on
    page.wait_for_selector("#dashboard-message", state="hidden")
    assert page.locator("#events-message").is_hidden()


def test_the_graph_explorer_draws_a_neighbourhood_and_a_journey(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    hopcast.request("POST", "/v1/mutations", {"mutations": journey_mutations()})
    page = open_console(context, hopcast)
    # before any search, the journey panel says what it will show (it was an empty box)
    assert "Find an account" in page.inner_text("#journey-message")
    page.fill("#search input[name=q]", "profile:0-0")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#graph-svg .node.center[data-id='profile:0-0']")
    drawn = page.eval_on_selector_all("#graph-svg .node", "ns => ns.map(n => n.dataset.id)")
    assert {"profile:0-0", "account:0", "title:1", "title:2", "game:5"} <= set(drawn)
    assert page.locator("#graph-svg line.edge").count() >= 4
    # a profile's journey: its account's interactions, one lane per device, one colour a vertical
    page.wait_for_selector("#journey-svg circle.entry")
    verticals = page.eval_on_selector_all(
        "#journey-svg circle.entry", "cs => cs.map(c => c.dataset.vertical)"
    )
    assert {"streaming", "games"} <= set(verticals)
    caption = page.inner_text("#journey-caption")
    assert " 1 devices" not in caption and "device" in caption, caption
    # clicking a node moves the explorer there; a title has no journey: the member's timeline
    # goes, and the panel says why (it kept the previous member's timeline)
    page.click("#graph-svg .node[data-id='title:1'] circle")
    page.wait_for_selector("#graph-svg .node.center[data-id='title:1']")
    page.wait_for_selector("#journey-message:has-text('title:1 has no journey')")
    assert page.locator("#journey-svg circle.entry").count() == 0
    assert page.inner_text("#journey-caption") == ""
    assert_no_placeholders(page)
    page.screenshot(path=str(artifacts / "graph.png"), full_page=True)
    assert page.errors == []


def journey_mutations() -> list[dict[str, Any]]:
    """An account with a profile on a TV that watched two titles and played a game (times
    within the schema's 100-day retention)."""
    t = int(time.time() * 1_000_000) - 3_600_000_000
    nodes = {
        "account:0": {"country": "US", "plan": "premium"},
        "profile:0-0": {"name": "Ana", "language": "en"},
        "device:0-1": {"device_type": "tv"},
        "title:1": {"name": "Harbour Lights"},
        "title:2": {"name": "Glass Kingdom"},
        "game:5": {"name": "Tiny Planet"},
    }
    edges = [
        ("account:0", "has_profile", "profile:0-0", 0, {}),
        ("account:0", "logged_in_from", "device:0-1", 0, {}),
        ("profile:0-0", "started_watching", "title:1", 60, {"device": "device:0-1"}),
        ("profile:0-0", "started_watching", "title:2", 600, {"device": "device:0-1"}),
        ("profile:0-0", "plays", "game:5", 900, {}),
    ]
    out: list[dict[str, Any]] = [
        {"kind": "node_upsert", "node": n, "ts": t, "id": f"n-{n}", "props": p}
        for n, p in nodes.items()
    ]
    out += [
        {
            "kind": "edge_upsert",
            "src": src,
            "type": type_,
            "dst": dst,
            "ts": t + dt * 1_000_000,
            "id": f"e-{src}-{dst}",
            "props": props,
        }
        for src, type_, dst, dt, props in edges
    ]
    return out


def test_recommendations_from_the_graph_are_computed_and_listed_by_segment(
    context: Any, hopcast: Hopcast, artifacts: Path
) -> None:
    hopcast.request("POST", "/v1/mutations", {"mutations": journey_mutations()})
    t = int(time.time() * 1_000_000) - 60_000_000
    hopcast.request(
        "POST",
        "/v1/mutations",
        {
            "mutations": [
                {
                    "kind": "node_upsert",
                    "node": "live_event:final",
                    "ts": t,
                    "id": "n-final",
                    "props": {"name": "The Final", "sport": "football"},
                },
                {
                    "kind": "edge_upsert",
                    "src": "profile:0-0",
                    "type": "browsed",
                    "dst": "live_event:final",
                    "ts": t,
                    "id": "e-browse-final",
                    "props": {"row": "live", "page": "home"},
                },
            ]
        },
    )
    hopcast.create_event("final", "The Final", starts_at="10m")
    page = open_console(context, hopcast)
    page.wait_for_selector("#recs-message:has-text('no recommendations from the graph yet')")
    page.locator("tr[data-event=final] button.recs-btn").click()
    page.wait_for_selector("#recs .segment")
    doc = hopcast.request("GET", "/v1/console/events/final/segments?member=profile:0-0")
    keys = page.eval_on_selector_all("#recs .segment", "s => s.map(x => x.dataset.segment)")
    assert keys == [s["key"] for s in doc["segments"]]
    assert page.locator("#recs-message").is_hidden()
    page.screenshot(path=str(artifacts / "recommendations.png"), full_page=True)
    assert page.errors == []


def test_the_console_takes_its_key_from_the_fragment_and_removes_it_from_the_address(
    context: Any, hopcast: Hopcast
) -> None:
    hopcast.create_event("final", "The Final", starts_at="10m")
    console = open_console(context, hopcast)
    console.wait_for_selector("tr[data-event=final]")
    assert console.evaluate("() => location.hash") == ""
    assert "key=" not in console.url
    assert console.evaluate("() => sessionStorage.getItem('hopcast.key')") == hopcast.key
    assert console.locator("#key-form").is_hidden()
    assert console.errors == []


def test_a_console_without_a_key_asks_for_one_and_works_once_given(
    context: Any, hopcast: Hopcast
) -> None:
    hopcast.create_event("final", "The Final", starts_at="10m")
    console = open_console(context, hopcast, key=None)
    console.wait_for_selector("#key-form", state="visible")
    assert console.locator("tr[data-event=final]").count() == 0
    console.fill("#key-form input[name=key]", hopcast.key)
    console.click("#key-form button[type=submit]")
    console.wait_for_selector("#key-form", state="hidden")
    console.wait_for_selector("tr[data-event=final]")  # the next poll carries the key
    assert console.errors == []


def test_ends_after_takes_durations_with_words_and_refuses_what_it_cannot_read(
    context: Any, hopcast: Hopcast
) -> None:
    """ "1 day" sets the end a day after the start; a value that is not a duration is refused
    with a message before anything is created (it was silently dropped: an event with no end)."""
    console = open_console(context, hopcast)

    def create(event: str, ends_after: str) -> None:
        console.fill("#create input[name=id]", event)
        console.fill("#create input[name=title]", event.title())
        console.fill("#create input[name=starts_at]", "2h")
        console.fill("#create input[name=ends_after]", ends_after)
        console.click("#create button[type=submit]")

    create("day", "1 day")
    console.wait_for_selector("#events-message:has-text('created day')")
    event = hopcast.event("day")
    assert event["ends_at"] - event["starts_at"] == 86_400 * 1_000_000, event
    create("never", "1 fortnight")
    console.wait_for_selector("#events-message:has-text('is not a duration')")
    events = [e["id"] for e in hopcast.request("GET", "/v1/live/events")["events"]]
    assert "never" not in events, events
    assert console.errors == []


@pytest.mark.parametrize(("width", "height"), [(1400, 900), (390, 844)])
def test_the_dashboard_fits_its_cards_at_desktop_and_phone_widths(
    context: Any, hopcast: Hopcast, artifacts: Path, width: int, height: int
) -> None:
    """A fleet's time to update in seconds ("4,792 / 10,029 ms") once overflowed its card and
    gave the page a horizontal scrollbar: with such values, no card's value overflows and the
    page is no wider than the window, at 1400×900 and 390×844; nothing reads null/undefined."""
    import json

    hopcast.create_event("final", "The Final", starts_at="10m")
    slow = {
        "event": "final", "stage": "live", "version": 2, "trigger_ts": 1_700_000_000_000_000,
        "devices": 9_876, "connected": 10_000, "p50_ms": 4_792.4, "p90_ms": 8_001.2,
        "p99_ms": 10_029.7, "max_ms": 12_345.6,
        "cdf": [{"ms": 120.0 * i, "fraction": i / 100} for i in range(1, 101)],
    }  # fmt: skip

    def dashboard(route: Any) -> None:
        answer = route.fetch()
        doc = answer.json()
        doc["time_to_update"] = slow
        route.fulfill(response=answer, body=json.dumps(doc))

    context.route("**/v1/console/dashboard*", dashboard)
    console = open_console(context, hopcast)
    console.set_viewport_size({"width": width, "height": height})
    console.wait_for_selector("#m-ttu-sub:has-text('9,876 of 10,000 devices')")
    overflowing = console.evaluate(
        """() => [...document.querySelectorAll('.card .value')]
            .filter((v) => v.scrollWidth > v.clientWidth + 1).map((v) => v.id)"""
    )
    assert overflowing == [], f"card values wider than their card: {overflowing}"
    wide = console.evaluate(
        """() => {
            const limit = document.documentElement.clientWidth;
            if (document.documentElement.scrollWidth <= limit) return [];
            const right = (e) => e.getBoundingClientRect().right;
            return [...document.querySelectorAll('body *')]
                .filter((e) => right(e) > limit + 1)
                .filter((e) => !e.parentElement || right(e.parentElement) <= limit + 1)
                .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className} ${right(e)}`);
        }"""
    )
    assert wide == [], f"the page scrolls sideways past {width} px: {wide}"
    assert "4,792" in console.inner_text("#m-ttu")
    console.screenshot(path=str(artifacts / f"console-{width}x{height}.png"), full_page=True)
    assert_no_placeholders(console)
    assert console.errors == []
