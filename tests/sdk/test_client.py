"""The asyncio device client against a scripted in-test gateway: connect and apply, reconnect
with full-jitter backoff and resume, bye, duplicates, fallback fetches, token refresh, dead and
misbehaving connections, prefetch, and a clean stop.

The gateway here is a few lines on ``websockets.asyncio.server.serve`` speaking the wire protocol
through ``hopcast.live.messages``; each connection runs the next script. Delays go through an
injected ``sleep`` that records them and returns at once, so the expected delays are recomputed
from a copy of the seeded RNG; the clock is fixed, so no deadline passes unless a test asks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from hopcast.durations import HOUR, SECOND, now_us
from hopcast.errors import ConfigError, InvalidInput, TokenError
from hopcast.live import messages as m
from hopcast.live import tokens
from hopcast.live.messages import EventStage, Position
from hopcast.live.prefetch import Manifest, ranked_spread_delay, spread_delay
from hopcast.ports import PortReservation
from hopcast.sdk.client import AppliedStage, DeviceClient, payload_ref
from hopcast.sdk.protocol import (
    FALLBACK_WINDOW_S,
    DeviceEvent,
    StateSynced,
    TriggerApplied,
    Welcomed,
    fallback_fetch_delay,
    reconnect_delay,
)

NOW = 1_767_225_600_000_000
SECRET = b"test-secret-of-at-least-32-bytes!"
TOKEN = tokens.issue(SECRET, "device-1", ["global"], NOW, HOUR)
EXPIRED = tokens.issue(SECRET, "device-1", ["global"], NOW - 3 * HOUR, HOUR)
SEED = 7
EPOCH = 3
#: Bound on every scenario; each passes in milliseconds, so hitting it means a hang.
TIMEOUT_S = 30.0
#: A heartbeat whose liveness deadline (2.5 intervals) passes almost at once.
TINY_HEARTBEAT_MS = 1


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, TIMEOUT_S))


class Changes:
    """Wakes waiters whenever something a test waits for may have changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self, *_: object) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._event.clear()
            await self._event.wait()


class Peer:
    """The gateway's side of one connection, with the few moves scripts need."""

    def __init__(self, ws: ServerConnection, hello: m.Hello) -> None:
        self.ws = ws
        self.hello = hello

    async def send(self, msg: m.Message) -> None:
        await self.ws.send(m.encode(msg), text=True)

    async def welcome(self, heartbeat_ms: int = 30_000) -> m.Subscribe | None:
        """Send ``welcome``; return the ``subscribe`` that follows (None on a tiny heartbeat)."""
        await self.send(m.Welcome(node="gw-test", heartbeat_ms=heartbeat_ms))
        if heartbeat_ms == TINY_HEARTBEAT_MS:
            return None
        msg = m.decode_from_client(await self.ws.recv(decode=False))
        assert isinstance(msg, m.Subscribe)
        return msg

    async def state(self, seq: int, *stages: EventStage) -> None:
        await self.send(m.State(channel="global", epoch=EPOCH, seq=seq, events=stages))

    async def trigger(
        self, seq: int, version: int, stage: str = "live", payload: str | None = None
    ) -> None:
        await self.send(
            m.Trigger(
                channel="global",
                epoch=EPOCH,
                seq=seq,
                event="finale",
                stage=stage,
                version=version,
                ts=NOW - 1000 + seq,
                payload=payload,
            )
        )


Script = Callable[[Peer], Awaitable[None]]


async def serve_forever(peer: Peer) -> None:
    """The default script: welcome, an empty snapshot, then nothing."""
    await peer.welcome()
    await peer.state(0)


class Gateway:
    """Scripted gateway: connection i runs ``scripts[i]`` (the last one repeats), after the
    ``hello`` (recorded) and a token check that answers ``error unauthorized`` itself."""

    def __init__(self, changes: Changes, *scripts: Script) -> None:
        self.changes = changes
        self.scripts = scripts or (serve_forever,)
        self.hellos: list[m.Hello] = []
        self.close_codes: list[int | None] = []
        self.url = ""
        self._server: Server | None = None

    async def __aenter__(self) -> Gateway:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        hello = m.decode_from_client(await ws.recv(decode=False))
        assert isinstance(hello, m.Hello)
        index = len(self.hellos)
        self.hellos.append(hello)
        self.changes.notify()
        try:
            tokens.verify(SECRET, hello.token, NOW)
        except tokens.TokenError as exc:
            await ws.send(m.encode(m.Error(code="unauthorized", reason=str(exc))), text=True)
            await ws.close()
        else:
            await self.scripts[min(index, len(self.scripts) - 1)](Peer(ws, hello))
        await ws.wait_closed()
        self.close_codes.append(ws.close_code)
        self.changes.notify()


class Sleeps:
    """An injected ``sleep``: records each delay and returns at once (or when released)."""

    def __init__(self, changes: Changes, *, hold: bool = False) -> None:
        self.changes = changes
        self.delays: list[float] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.changes.notify()
        await self.release.wait()


def new_client(url: str, changes: Changes, sleeps: Sleeps, **kwargs: Any) -> DeviceClient:
    kwargs.setdefault("clock", lambda: NOW)
    kwargs.setdefault("on_event", changes.notify)
    return DeviceClient(
        url,
        kwargs.pop("token", TOKEN),
        ["global"],
        rng=random.Random(SEED),
        sleep=sleeps,
        **kwargs,
    )


async def stop_and_join(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task


# -- connecting and applying --------------------------------------------------------------------


def test_a_device_connects_subscribes_and_applies_a_trigger() -> None:
    events: list[DeviceEvent] = []

    async def script(peer: Peer) -> None:
        subscribe = await peer.welcome()
        assert subscribe == m.Subscribe(channels=("global",))
        await peer.state(0)
        await peer.trigger(1, 4)

    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes, script) as gw:

            def on_event(event: DeviceEvent) -> None:
                events.append(event)
                changes.notify()

            client = new_client(gw.url, changes, Sleeps(changes), on_event=on_event)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.triggers_applied == 1)
            await stop_and_join(stop, task)

        assert gw.hellos[0].token == TOKEN and gw.hellos[0].last == {}
        assert [type(e) for e in events] == [Welcomed, StateSynced, TriggerApplied]
        assert client.stats.applied == [AppliedStage("global", "finale", "live", 4, NOW - 999, NOW)]
        assert client.protocol.positions == {"global": Position(EPOCH, 1)}
        assert (client.stats.connects, client.stats.reconnects, client.stats.welcomes) == (1, 0, 1)

    run(scenario())


def test_a_replayed_trigger_is_applied_once_and_counted_as_a_duplicate() -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        await peer.state(0)
        await peer.trigger(1, 4)
        await peer.trigger(1, 4)
        await peer.trigger(2, 5, stage="ended")

    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes, script) as gw:
            client = new_client(gw.url, changes, Sleeps(changes))
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.triggers_applied == 2)
            await stop_and_join(stop, task)

        assert [(a.stage, a.version) for a in client.stats.applied] == [("live", 4), ("ended", 5)]
        assert client.stats.duplicates == 1 and client.stats.stale == 0

    run(scenario())


# -- reconnecting --------------------------------------------------------------------------------


def test_a_device_dropped_by_the_gateway_reconnects_after_jittered_backoff_and_resumes() -> None:
    async def first(peer: Peer) -> None:
        await peer.welcome()
        await peer.state(0)
        await peer.trigger(1, 4)
        await peer.trigger(2, 5, stage="ended")
        await peer.ws.close()

    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes)
        async with Gateway(changes, first, serve_forever) as gw:
            client = new_client(gw.url, changes, sleeps)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.welcomes == 2)
            await stop_and_join(stop, task)

        assert gw.hellos[1].last == {"global": Position(EPOCH, 2)}
        assert sleeps.delays == [reconnect_delay(0, random.Random(SEED))]
        assert (client.stats.connects, client.stats.reconnects) == (2, 1)
        assert client.stats.triggers_applied == 2

    run(scenario())


def test_a_bye_makes_the_device_wait_its_retry_after_plus_jitter() -> None:
    async def restarting(peer: Peer) -> None:
        await peer.welcome()
        await peer.send(m.Bye(reason="restart", retry_after_ms=250))

    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes)
        async with Gateway(changes, restarting, serve_forever) as gw:
            client = new_client(gw.url, changes, sleeps)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.welcomes == 2)
            await stop_and_join(stop, task)

        assert sleeps.delays == [reconnect_delay(0, random.Random(SEED), 250)]
        assert sleeps.delays[0] >= 0.25
        assert client.stats.byes == 1 and gw.close_codes[0] == 1000

    run(scenario())


def test_backoff_windows_grow_while_the_gateway_is_down(reserved_port: PortReservation) -> None:
    # nothing listens on a reserved port, and nothing can start to: every connect is refused
    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes)
        client = new_client(f"ws://127.0.0.1:{reserved_port.port}", changes, sleeps)
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        await changes.until(lambda: len(sleeps.delays) == 3)
        await stop_and_join(stop, task)

        rng = random.Random(SEED)
        assert sleeps.delays == [reconnect_delay(attempt, rng) for attempt in range(3)]
        assert (client.stats.connects, client.stats.connect_failures) == (0, 3)
        assert client.stats.reconnects == 2

    run(scenario())


def test_a_welcome_resets_the_backoff_to_the_first_window() -> None:
    async def refuse(peer: Peer) -> None:
        await peer.ws.close()

    async def welcome_then_close(peer: Peer) -> None:
        await peer.welcome()
        await peer.ws.close()

    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes)
        scripts = (refuse, refuse, refuse, welcome_then_close, serve_forever)
        async with Gateway(changes, *scripts) as gw:
            client = new_client(gw.url, changes, sleeps)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: len(gw.hellos) == 5 and client.stats.welcomes == 2)
            await stop_and_join(stop, task)

        rng = random.Random(SEED)
        assert sleeps.delays == [reconnect_delay(attempt, rng) for attempt in (0, 1, 2, 0)]

    run(scenario())


def test_a_silent_connection_is_dropped_at_the_deadline_and_replaced() -> None:
    async def silent(peer: Peer) -> None:
        await peer.welcome(heartbeat_ms=TINY_HEARTBEAT_MS)

    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes, silent, serve_forever) as gw:
            # The real clock: the deadline, 2.5 ms after the welcome, must pass.
            client = new_client(gw.url, changes, Sleeps(changes), clock=now_us)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.welcomes == 2)
            await stop_and_join(stop, task)

        assert client.stats.timeouts == 1 and client.stats.reconnects == 1

    run(scenario())


def test_an_invalid_frame_closes_the_connection_as_a_protocol_error_and_reconnects() -> None:
    async def garbage(peer: Peer) -> None:
        await peer.welcome()
        await peer.ws.send(b'{"type":"trigger","seq":"one"}', text=True)

    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes, garbage, serve_forever) as gw:
            client = new_client(gw.url, changes, Sleeps(changes))
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.welcomes == 2)
            await stop_and_join(stop, task)

        assert client.stats.protocol_errors == 1 and gw.close_codes[0] == 1002

    run(scenario())


def test_a_sequence_gap_makes_the_device_reconnect_from_its_last_contiguous_position() -> None:
    async def gapped(peer: Peer) -> None:
        await peer.welcome()
        await peer.state(0)
        await peer.trigger(1, 4)
        await peer.trigger(3, 6, stage="ended")

    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes, gapped, serve_forever) as gw:
            client = new_client(gw.url, changes, Sleeps(changes))
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.welcomes == 2)
            await stop_and_join(stop, task)

        assert client.stats.resyncs == 1
        assert gw.hellos[1].last == {"global": Position(EPOCH, 1)}

    run(scenario())


# -- errors from the gateway ---------------------------------------------------------------------


def test_an_unauthorized_device_refreshes_its_token_and_reconnects_with_the_new_one() -> None:
    async def scenario() -> None:
        changes = Changes()
        refreshed: list[str] = []

        async def refresh_token() -> str:
            refreshed.append(TOKEN)
            return TOKEN

        async with Gateway(changes) as gw:
            client = new_client(
                gw.url, changes, Sleeps(changes), token=EXPIRED, refresh_token=refresh_token
            )
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.welcomes == 1)
            await stop_and_join(stop, task)

        assert [h.token for h in gw.hellos] == [EXPIRED, TOKEN]
        assert refreshed == [TOKEN] and client.stats.token_refreshes == 1
        assert client.token == TOKEN and client.stats.server_errors == 1

    run(scenario())


def test_an_unauthorized_device_without_a_refresh_callback_stops_with_a_token_error() -> None:
    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes) as gw:
            client = new_client(gw.url, changes, Sleeps(changes), token=EXPIRED)
            with pytest.raises(TokenError, match="unauthorized"):
                await client.run(asyncio.Event())

    run(scenario())


def test_a_gateway_speaking_another_protocol_version_stops_the_client() -> None:
    async def other_version(peer: Peer) -> None:
        await peer.send(m.Error(code="unsupported_protocol", reason="speaks 2"))

    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes, other_version) as gw:
            client = new_client(gw.url, changes, Sleeps(changes))
            with pytest.raises(ConfigError, match="protocol 1"):
                await client.run(asyncio.Event())

    run(scenario())


def test_a_forbidden_channel_keeps_the_connection_open() -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        await peer.send(m.Error(code="forbidden", reason="not in your scopes: vip"))
        await peer.state(0)
        await peer.trigger(1, 4)

    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes, script) as gw:
            client = new_client(gw.url, changes, Sleeps(changes))
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.triggers_applied == 1)
            await stop_and_join(stop, task)

        assert client.stats.server_errors == 1
        assert (client.stats.connects, client.stats.reconnects) == (1, 0)

    run(scenario())


# -- payloads ------------------------------------------------------------------------------------


def live_with_payload(payload: str, *more: tuple[int, str]) -> Script:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        await peer.state(0)
        await peer.trigger(1, 4, payload=payload)
        for seq, stage in more:
            await peer.trigger(seq, 3 + seq, stage=stage, payload=payload)

    return script


def test_a_trigger_naming_a_missing_payload_fetches_it_after_the_jittered_delay() -> None:
    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes)
        fetched: list[str] = []

        async def fetch(ref: str) -> bytes:
            fetched.append(ref)
            return b'{"rows":[]}'

        async with Gateway(changes, live_with_payload("finale/live")) as gw:
            client = new_client(gw.url, changes, sleeps, fetch=fetch)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: "finale/live" in client.cache)
            await stop_and_join(stop, task)

        assert sleeps.delays == [fallback_fetch_delay(random.Random(SEED), FALLBACK_WINDOW_S)]
        assert fetched == ["finale/live"] and client.cache["finale/live"] == b'{"rows":[]}'
        assert client.stats.fallback_fetches == 1 and client.stats.fallback_failures == 0

    run(scenario())


def test_a_payload_missing_for_two_triggers_is_fetched_once() -> None:
    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes, hold=True)
        fetched: list[str] = []

        async def fetch(ref: str) -> bytes:
            fetched.append(ref)
            return b"{}"

        async with Gateway(changes, live_with_payload("finale/live", (2, "encore"))) as gw:
            client = new_client(gw.url, changes, sleeps, fetch=fetch)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.triggers_applied == 2)
            sleeps.release.set()
            await changes.until(lambda: "finale/live" in client.cache)
            await stop_and_join(stop, task)

        assert fetched == ["finale/live"] and len(sleeps.delays) == 1

    run(scenario())


def test_a_cached_payload_is_not_fetched_again() -> None:
    async def scenario() -> None:
        changes = Changes()
        fetched: list[str] = []

        async def fetch(ref: str) -> bytes:
            fetched.append(ref)
            return b"{}"

        async with Gateway(changes, live_with_payload("finale/live")) as gw:
            client = new_client(
                gw.url, changes, Sleeps(changes), fetch=fetch, cache={"finale/live": b"{}"}
            )
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.triggers_applied == 1)
            await stop_and_join(stop, task)

        assert fetched == [] and client.stats.fallback_fetches == 0

    run(scenario())


def test_a_failed_fallback_fetch_is_counted_and_the_connection_goes_on() -> None:
    async def scenario() -> None:
        changes = Changes()

        async def fetch(ref: str) -> bytes:
            changes.notify()
            raise OSError("origin unreachable")

        async with Gateway(changes, live_with_payload("finale/live", (2, "ended"))) as gw:
            client = new_client(gw.url, changes, Sleeps(changes), fetch=fetch)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.fallback_failures == 1)
            await changes.until(lambda: client.stats.triggers_applied == 2)
            await stop_and_join(stop, task)

        assert client.cache == {} and client.stats.connects == 1

    run(scenario())


def manifest_body() -> bytes:
    live, ended = b'{"rows":["a"]}', b'{"rows":["b"]}'
    return msgspec.json.encode(
        Manifest(
            event="finale",
            segment="all",
            stages={"live": "p-live", "ended": "p-ended"},
            payloads={"p-live": msgspec.Raw(live), "p-ended": msgspec.Raw(ended)},
        )
    )


def test_prefetch_waits_for_the_devices_point_of_the_window_then_caches_every_stage() -> None:
    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes)
        asked: list[str] = []

        async def fetch(ref: str) -> bytes:
            asked.append(ref)
            return manifest_body()

        client = new_client("ws://127.0.0.1:9", changes, sleeps, fetch=fetch)
        opens, closes = NOW + 10 * SECOND, NOW + 70 * SECOND
        manifest = await client.prefetch(
            "/m/finale", opens_at=opens, closes_at=closes, device_id="d1"
        )
        await client.prefetch("/m/finale", opens_at=opens, closes_at=closes, rank=5)

        assert manifest is not None and manifest.event == "finale"
        assert sleeps.delays == [
            spread_delay("d1", opens, closes, NOW) / SECOND,
            ranked_spread_delay(5, opens, closes, NOW) / SECOND,
        ]
        assert asked == ["/m/finale", "/m/finale"] and client.stats.prefetches == 2
        assert client.cache == {
            payload_ref("finale", "live"): b'{"rows":["a"]}',
            payload_ref("finale", "ended"): b'{"rows":["b"]}',
        }

    run(scenario())


def test_prefetch_of_an_unpublished_manifest_caches_nothing() -> None:
    async def scenario() -> None:
        changes = Changes()

        async def fetch(ref: str) -> None:
            return None

        client = new_client("ws://127.0.0.1:9", changes, Sleeps(changes), fetch=fetch)
        assert await client.prefetch("/m/x", opens_at=NOW, closes_at=NOW, rank=0) is None
        assert client.cache == {} and client.stats.prefetches == 0

    run(scenario())


def test_prefetch_needs_exactly_one_way_to_place_the_fetch() -> None:
    async def scenario() -> None:
        changes = Changes()

        async def fetch(ref: str) -> bytes:
            return manifest_body()

        client = new_client("ws://127.0.0.1:9", changes, Sleeps(changes), fetch=fetch)
        with pytest.raises(InvalidInput, match="exactly one"):
            await client.prefetch("/m", opens_at=NOW, closes_at=NOW, device_id="d", rank=1)
        with pytest.raises(InvalidInput, match="exactly one"):
            await client.prefetch("/m", opens_at=NOW, closes_at=NOW)

    run(scenario())


# -- stopping ------------------------------------------------------------------------------------


def test_stop_closes_the_connection_normally_and_cancels_pending_fetches() -> None:
    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes, hold=True)
        fetched: list[str] = []

        async def fetch(ref: str) -> bytes:
            fetched.append(ref)
            return b"{}"

        async with Gateway(changes, live_with_payload("finale/live")) as gw:
            client = new_client(gw.url, changes, sleeps, fetch=fetch)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: len(sleeps.delays) == 1)  # the fetch is waiting
            await stop_and_join(stop, task)
            await changes.until(lambda: len(gw.close_codes) == 1)

        assert gw.close_codes == [1000] and fetched == []

    run(scenario())


def test_stop_during_a_backoff_wait_ends_run_without_reconnecting(
    reserved_port: PortReservation,
) -> None:
    # nothing listens on a reserved port, and nothing can start to: every connect is refused
    async def scenario() -> None:
        changes = Changes()
        sleeps = Sleeps(changes, hold=True)
        client = new_client(f"ws://127.0.0.1:{reserved_port.port}", changes, sleeps)
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        await changes.until(lambda: len(sleeps.delays) == 1)
        await stop_and_join(stop, task)

        assert client.stats.connect_failures == 1 and client.stats.reconnects == 0

    run(scenario())


def test_a_set_stop_event_ends_run_before_any_connection(reserved_port: PortReservation) -> None:
    # nothing listens on a reserved port, and nothing can start to: every connect is refused
    async def scenario() -> None:
        changes = Changes()
        client = new_client(f"ws://127.0.0.1:{reserved_port.port}", changes, Sleeps(changes))
        stop = asyncio.Event()
        stop.set()
        await client.run(stop)
        assert client.stats.connects == client.stats.connect_failures == 0

    run(scenario())


def test_run_cannot_be_started_twice_at_once() -> None:
    async def scenario() -> None:
        changes = Changes()
        async with Gateway(changes) as gw:
            client = new_client(gw.url, changes, Sleeps(changes))
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await changes.until(lambda: client.stats.welcomes == 1)
            with pytest.raises(RuntimeError, match="already running"):
                await client.run(stop)
            await stop_and_join(stop, task)

    run(scenario())


def test_a_url_that_is_not_a_websocket_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a WebSocket URL"):
        DeviceClient("http://gateway", TOKEN, ["global"], rng=random.Random(SEED))
