"""The browser's protocol core (web/protocol.js) against the Python SDK's (sdk/protocol.py): the
same frames in give the same events, positions and frames out; the same prefetch window and
spread point; the same refusals of malformed frames. Run in Chromium, so it is the code the
device page runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest

from hopcast.errors import ProtocolError
from hopcast.live.prefetch import spread_delay, window
from hopcast.sdk.protocol import DeviceProtocol
from web.pages import Hopcast

EPOCH = 2**53 - 1  # the largest epoch the gateway draws: still exact in a JavaScript number
TS = 1_764_150_000_000_000

FRAMES = [
    {"type": "welcome", "node": "gw-1", "heartbeat_ms": 30000},
    {
        "type": "state",
        "channel": "global",
        "epoch": EPOCH,
        "seq": 3,
        "events": [{"event": "final", "stage": "prefetch", "version": 2, "ts": TS}],
    },
    {"type": "ping", "ts": TS + 5},
    {
        "type": "trigger",
        "channel": "global",
        "epoch": EPOCH,
        "seq": 4,
        "event": "final",
        "stage": "live",
        "version": 3,
        "ts": TS + 10,
        "payload": "final/live",
    },
    # a replay of the same trigger: a duplicate, nothing applied, position unchanged
    {
        "type": "trigger",
        "channel": "global",
        "epoch": EPOCH,
        "seq": 4,
        "event": "final",
        "stage": "live",
        "version": 3,
        "ts": TS + 10,
        "payload": "final/live",
    },
    # seq 5 is missing: applied by version, but the channel needs a resync
    {
        "type": "trigger",
        "channel": "global",
        "epoch": EPOCH,
        "seq": 6,
        "event": "final",
        "stage": "ended",
        "version": 5,
        "ts": TS + 20,
        "payload": "final/ended",
    },
    {"type": "error", "code": "forbidden", "reason": "channel 'x' is outside the token's scopes"},
    {"type": "refresh", "expires_at": TS + 60_000_000, "within_ms": 90_000},
    {"type": "bye", "reason": "restart", "retry_after_ms": 1500},
]

#: The cache holds the live stage's payload (prefetched) but not the ended one's.
CACHED = ["final/live"]

KINDS = {
    "Welcomed": "welcomed",
    "TriggerApplied": "trigger_applied",
    "NeedsPayload": "needs_payload",
    "StateSynced": "state_synced",
    "ResyncNeeded": "resync_needed",
    "ServerError": "server_error",
    "ServerBye": "server_bye",
    "RefreshRequested": "refresh_requested",
}


def python_run() -> dict[str, Any]:
    proto = DeviceProtocol(
        "tok-1", ["global"], client="hopcast-web/0.1.0", cache=dict.fromkeys(CACHED)
    )
    out: dict[str, Any] = {"hello": proto.connect(TS).decode(), "steps": []}
    for frame in FRAMES:
        events = proto.receive(json.dumps(frame), TS)
        if frame["type"] == "refresh":
            proto.renew("tok-2")
        step = []
        for e in events:
            d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(e).items()}
            step.append({"kind": KINDS[type(e).__name__], **d})
        out["steps"].append({"events": step, "send": [b.decode() for b in proto.data_to_send()]})
    out["positions"] = {ch: list(p) for ch, p in proto.positions.items()}
    out["duplicates"], out["stale"] = proto.duplicates, proto.stale
    proto.connection_lost()
    out["resume"] = proto.connect(TS + 100).decode()
    return out


JS_RUN = """async ([frames, cached, ts]) => {
    const p = await import("/web/protocol.js");
    const proto = new p.DeviceProtocol("tok-1", ["global"], { cache: new Set(cached) });
    const out = { hello: proto.connect(ts), steps: [] };
    for (const frame of frames) {
        const events = proto.receive(JSON.stringify(frame), ts);
        if (frame.type === "refresh") proto.renew("tok-2");
        out.steps.push({ events, send: proto.dataToSend() });
    }
    out.positions = Object.fromEntries(proto.positions);
    out.duplicates = proto.duplicates;
    out.stale = proto.stale;
    proto.connectionLost();
    out.resume = proto.connect(ts + 100);
    return out;
}"""

#: The JS events use camelCase where the Python dataclasses use snake_case, and add `source`.
RENAME = {
    "heartbeatMs": "heartbeat_ms",
    "retryAfterMs": "retry_after_ms",
    "expiresAt": "expires_at",
    "withinMs": "within_ms",
}


@pytest.fixture
def page(context: Any, hopcast: Hopcast) -> Any:
    page = context.new_page()
    page.goto(f"{hopcast.base}/healthz")  # any page of the origin: the module is imported
    return page


def test_the_same_frames_give_the_same_events_positions_and_frames_out(page: Any) -> None:
    js = page.evaluate(JS_RUN, [FRAMES, CACHED, TS])
    py = python_run()
    assert js["hello"] == py["hello"]
    assert js["resume"] == py["resume"]
    assert json.loads(js["resume"])["last"] == {"global": [EPOCH, 4]}
    assert js["positions"] == py["positions"] == {"global": [EPOCH, 4]}
    assert (js["duplicates"], js["stale"]) == (py["duplicates"], py["stale"]) == (1, 0)
    for js_step, py_step in zip(js["steps"], py["steps"], strict=True):
        assert js_step["send"] == py_step["send"]
        events = [
            {RENAME.get(k, k): v for k, v in e.items() if k != "source"} for e in js_step["events"]
        ]
        assert events == py_step["events"]
    kinds = [[e["kind"] for e in s["events"]] for s in js["steps"]]
    assert kinds == [
        ["welcomed"],
        ["trigger_applied", "state_synced"],
        [],
        ["trigger_applied"],
        [],
        ["trigger_applied", "needs_payload", "resync_needed"],
        ["server_error"],
        ["refresh_requested"],
        ["server_bye"],
    ]
    assert js["steps"][-2]["send"] == ['{"type":"token","token":"tok-2"}']
    assert json.loads(js["resume"])["token"] == "tok-2"  # a later hello presents the fresh one


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"type": "surprise"}',
        '{"type": "hello", "token": "t", "client": "c"}',
        '{"type": "welcome", "node": "gw", "heartbeat_ms": 0}',
        '{"type": "welcome", "node": "gw", "heartbeat_ms": 1.5}',
        '{"type": "ping", "ts": "now"}',
        '{"type": "trigger", "channel": "", "epoch": 1, "seq": 1, "event": "e", "stage": "live",'
        ' "version": 1, "ts": 1}',
        '{"type": "trigger", "channel": "g", "epoch": -1, "seq": 1, "event": "e", "stage": "l",'
        ' "version": 1, "ts": 1}',
    ],
)
def test_a_malformed_frame_is_refused_by_both(page: Any, frame: str) -> None:
    with pytest.raises(ProtocolError):
        proto = DeviceProtocol("tok", ["g"])
        proto.connect(TS)
        proto.receive(b'{"type":"welcome","node":"gw","heartbeat_ms":1000}', TS)
        proto.receive(frame, TS)
    refused = page.evaluate(
        """async (frame) => {
            const p = await import("/web/protocol.js");
            const proto = new p.DeviceProtocol("tok", ["g"]);
            proto.connect(1);
            proto.receive('{"type":"welcome","node":"gw","heartbeat_ms":1000}', 1);
            try { proto.receive(frame, 1); return null; }
            catch (exc) { return exc.name; }
        }""",
        frame,
    )
    assert refused == "ProtocolError"


def test_the_prefetch_window_and_spread_point_match_the_origins(page: Any) -> None:
    cases = [
        ("web-profile:0-0", TS, 30 * 60 * 10**6, None),
        ("tv-1", TS, 30 * 60 * 10**6, TS - 60 * 10**6),
        ("phone-7", TS, 20 * 10**6, TS - 10**7),
        ("kitchen", TS, 0, None),
    ]
    for device, starts_at, lead, available in cases:
        opens, closes = window(starts_at, lead, available)
        now = opens - 1_000
        js = page.evaluate(
            """async ([device, startsAt, lead, available, now]) => {
                const p = await import("/web/protocol.js");
                const [opens, closes] = p.prefetchWindow(startsAt, lead, available);
                return [opens, closes, await p.spreadDelay(device, opens, closes, now)];
            }""",
            [device, starts_at, lead, available, now],
        )
        assert js == [opens, closes, spread_delay(device, opens, closes, now)], device


def test_backoff_stays_within_the_sdks_bounds(page: Any) -> None:
    ceilings = page.evaluate(
        """async () => {
            const p = await import("/web/protocol.js");
            const top = () => 0.999999;
            return [0, 1, 2, 5, 6, 30].map((a) => p.reconnectDelay(a, top, 0));
        }"""
    )
    assert [round(c) for c in ceilings] == [1, 2, 4, 32, 60, 60]
