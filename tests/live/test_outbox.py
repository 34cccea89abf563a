"""The outbox: frames written in order, a chunk per loop slice, recipients fixed when queued; a
fleet-wide trigger through the gateway never holds the loop (measured by the loop-lag
monitor); taking an event live over HTTP answers before every socket is written, and every
socket is written after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx
from websockets.protocol import State as WsState

from hopcast import Graph
from hopcast.api import create_app
from hopcast.live import messages as m
from hopcast.live.fanout import InProcessTransport, Router
from hopcast.live.gateway import Gateway
from hopcast.live.outbox import CHUNK, Outbox
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService
from hopcast.looplag import LoopLag

SECRET = bytes(range(32))
NOW = 1_700_000_000_000_000
MINUTE = 60_000_000
#: Fake sockets in the loop-lag test: a large fleet on one loop.
FLEET = 20_000
#: What one fake write costs the loop there (a busy wait): a slow real write, so the whole
#: fleet written in one go holds the loop for 2 s.
WRITE_COST_S = 100e-6
#: Longest lag the monitor may see while that fleet is written in chunks: a chunk (500 writes)
#: costs ~50 ms; the rest is room for a loaded 2-core machine, which can stall a process for
#: hundreds of milliseconds. Written in one go the fleet holds the loop 2 s: the test fails.
LAG_BOUND_S = 1.0
#: Fake sockets (and the cost of a write) in the HTTP test: more than one chunk.
HTTP_FLEET = 2_000
HTTP_WRITE_COST_S = 20e-6
#: Bound on any wait for the outbox to finish; a healthy run needs a fraction of it.
WAIT_S = 30.0


class Recorder:
    """A writer that records each call's frame and recipients."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, list[int]]] = []

    def __call__(self, targets: Sequence[int], frame: bytes) -> None:
        self.calls.append((frame, list(targets)))


def test_a_small_batch_with_nothing_queued_is_written_at_once() -> None:
    async def main() -> Recorder:
        rec = Recorder()
        outbox = Outbox(rec, chunk=10)
        outbox.send({1, 2, 3}, b"a")
        assert rec.calls == [(b"a", [1, 2, 3])] and outbox.pending == 0
        return rec

    asyncio.run(main())


def test_a_big_batch_is_written_a_chunk_per_loop_slice_in_order() -> None:
    async def main() -> None:
        rec = Recorder()
        outbox = Outbox(rec, chunk=10)
        slices: list[int] = []

        async def observer() -> None:  # runs between the outbox's slices
            while True:
                slices.append(len(rec.calls))
                await asyncio.sleep(0)

        watching = asyncio.create_task(observer())
        outbox.send(list(range(25)), b"a")
        outbox.send(list(range(5)), b"b")  # queued behind "a", not written at once
        assert rec.calls == [] and outbox.pending == 30
        await asyncio.wait_for(outbox.drain(), WAIT_S)
        watching.cancel()
        sizes = [(frame, len(targets)) for frame, targets in rec.calls]
        # the budget spans frames: 10 | 10 | 5 of a + 5 of b
        assert sizes == [(b"a", 10), (b"a", 10), (b"a", 5), (b"b", 5)]
        assert [t for f, ts in rec.calls if f == b"a" for t in ts] == list(range(25))
        assert len(set(slices)) >= 3, "the loop ran other tasks between the chunks"
        assert outbox.frames == 2 and outbox.writes == 30

    asyncio.run(main())


def test_recipients_are_fixed_when_a_frame_is_queued() -> None:
    async def main() -> None:
        rec = Recorder()
        outbox = Outbox(rec, chunk=2)
        subscribers = {1, 2, 3}
        outbox.send(subscribers, b"a")
        subscribers.add(4)  # subscribed after "a" was queued: its catch-up holds "a"
        outbox.send(subscribers, b"b")
        await asyncio.wait_for(outbox.drain(), WAIT_S)
        got = {f: sorted(t for g, ts in rec.calls if g == f for t in ts) for f in (b"a", b"b")}
        assert got == {b"a": [1, 2, 3], b"b": [1, 2, 3, 4]}

    asyncio.run(main())


def test_a_closed_outbox_drops_what_is_queued_and_takes_nothing_more() -> None:
    async def main() -> None:
        rec = Recorder()
        outbox = Outbox(rec, chunk=2)
        outbox.send([1, 2, 3, 4, 5], b"a")
        await outbox.aclose()
        outbox.send([1], b"b")
        await outbox.drain()
        assert rec.calls == [] and outbox.pending == 0

    asyncio.run(main())


# -- a fleet of fake sockets -----------------------------------------------------------------------


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class FakeSocket:
    """What ``websockets.broadcast`` touches on a connection; each write costs the loop
    ``cost_s``."""

    __slots__ = ("cost_s", "protocol", "received", "send_in_progress", "state")

    def __init__(self, cost_s: float) -> None:
        self.protocol = self
        self.state = WsState.OPEN
        self.send_in_progress = None
        self.received: list[bytes] = []
        self.cost_s = cost_s

    def send_text(self, data: bytes) -> None:
        self.received.append(data)
        _busy(self.cost_s)

    def send_data(self) -> None:
        pass


def _fleet_on(gateway: Gateway, channel: str, size: int, cost_s: float) -> list[FakeSocket]:
    fleet = [FakeSocket(cost_s) for _ in range(size)]
    gateway._subs[channel] = set(fleet)  # type: ignore[arg-type]  # in-process fakes
    return fleet


def test_a_trigger_to_thousands_of_sockets_never_holds_the_loop() -> None:
    async def main() -> None:
        router = Router(InProcessTransport())
        gateway = Gateway(router, SECRET, node_id="t")
        router.subscribe(gateway._on_frame)
        fleet = _fleet_on(gateway, "global", FLEET, WRITE_COST_S)
        outbox = gateway._outbox
        lag = LoopLag(interval_s=0.005)
        lag.start()
        await asyncio.sleep(0.05)
        lag.reset_recent()
        between: list[int] = []  # writes made between two turns of another task

        async def observer() -> None:
            last = outbox.writes
            while True:
                await asyncio.sleep(0)
                between.append(outbox.writes - last)
                last = outbox.writes

        watching = asyncio.create_task(observer())
        await asyncio.sleep(0)
        started = time.perf_counter()
        router.publish_all([_trigger()])
        published_s = time.perf_counter() - started
        await asyncio.wait_for(outbox.drain(), WAIT_S)
        await asyncio.sleep(0.02)  # one more sample after the last chunk
        watching.cancel()
        await lag.stop()
        assert max(between) <= CHUNK, "no turn of the loop writes more than a chunk"
        assert all(len(s.received) == 1 for s in fleet)
        assert m.decode(fleet[0].received[0]) == m.decode(fleet[-1].received[0])
        worst = lag.stats()["max"]
        assert published_s < LAG_BOUND_S, f"publish took {published_s:.3f} s"
        assert worst < LAG_BOUND_S, (
            f"the loop was held {worst:.3f} s writing {FLEET} sockets "
            f"(bound {LAG_BOUND_S} s; {FLEET * WRITE_COST_S:.2f} s in one go)"
        )

    asyncio.run(main())


def _trigger() -> object:
    from hopcast.live.producer import Trigger
    from hopcast.live.schedule import State

    return Trigger("final", State.LIVE, 2, NOW)


def test_going_live_over_http_answers_before_the_fleet_is_written_and_the_fleet_gets_it_after() -> (
    None
):
    async def main() -> None:
        graph = Graph.open(clock=lambda: NOW)
        service = LiveService(graph.store.kv, clock=lambda: NOW)
        router = Router(InProcessTransport(), payload_for=service.payload_for)
        service.add_sink(router.publish_all)
        gateway = Gateway(router, SECRET, node_id="t")
        router.subscribe(gateway._on_frame)
        fleet = _fleet_on(gateway, "global", HTTP_FLEET, HTTP_WRITE_COST_S)
        service.command(Create("final", "The Final", NOW + 10 * MINUTE, None, MINUTE), NOW)
        await asyncio.wait_for(gateway._outbox.drain(), WAIT_S)  # the "scheduled" trigger
        app = create_app(graph, live=service)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/v1/live/events/final/start")
        assert response.status_code == 200, response.text
        # the answer came while the outbox still had sockets to write: not after every one
        assert gateway._outbox.pending > 0
        # the request is over; the outbox's own task delivers to everyone
        await asyncio.wait_for(gateway._outbox.drain(), WAIT_S)
        stages = {m.decode(s.received[-1]).stage for s in fleet}  # type: ignore[union-attr]
        assert stages == {"live"}
        graph.close()

    asyncio.run(main())


def test_a_writer_that_raises_does_not_stall_the_frames_behind_it() -> None:
    async def main() -> None:
        rec = Recorder()

        def flaky(targets: Sequence[int], frame: bytes) -> None:
            if frame == b"bad":
                raise RuntimeError("a bug in the writer")
            rec(targets, frame)

        outbox = Outbox(flaky, chunk=2)
        outbox.send([1, 2, 3], b"bad")
        outbox.send([1, 2, 3], b"good")
        await asyncio.wait_for(outbox.drain(), WAIT_S)
        assert [t for f, ts in rec.calls if f == b"good" for t in ts] == [1, 2, 3]

    asyncio.run(main())
