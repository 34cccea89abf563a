"""The live pieces together over real sockets: the operator's commands and the schedule's
timers (LiveService) → triggers → router → WebSocket gateway → SDK device clients.

Time is a fake clock the test advances; sockets and the asyncio client are real.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from hopcast.durations import MINUTE
from hopcast.kv.memory import MemoryKV
from hopcast.live import tokens
from hopcast.live.fanout import InProcessTransport, Router
from hopcast.live.gateway import Gateway
from hopcast.live.schedule import Create, EndNow, Reschedule, StartNow
from hopcast.live.service import LiveService
from hopcast.sdk.client import DeviceClient

SECRET = bytes(range(32))
T0 = 1_800_000_000_000_000
START = T0 + 30 * MINUTE
LEAD = 10 * MINUTE
#: Upper bound on any awaited condition; a healthy run needs milliseconds.
WAIT_S = 20.0
DEVICES = 5


async def _until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT_S)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


def test_schedule_changes_reach_every_device_once_in_order_through_the_gateway() -> None:
    clock = [T0]
    service = LiveService(MemoryKV(), clock=lambda: clock[0])
    router = Router(InProcessTransport())
    service.add_sink(router.publish_all)

    async def main() -> None:
        gateway = Gateway(router, SECRET, node_id="gw-1", clock=lambda: clock[0])
        server = await gateway.serve("127.0.0.1", 0)
        stop = asyncio.Event()
        clients = []
        for i in range(DEVICES):
            token = tokens.issue(SECRET, f"tv-{i}", ("event:final",), T0, 24 * 60 * MINUTE)
            clients.append(
                DeviceClient(
                    f"ws://127.0.0.1:{server.port}",
                    token,
                    ("event:final",),
                    rng=random.Random(i),
                    clock=lambda: clock[0],
                )
            )
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await _until(lambda: gateway.subscriber_count("event:final") == DEVICES)
            service.command(Create("final", "The Final", START, None, LEAD), clock[0])

            def stages() -> list[list[str]]:
                return [[a.stage for a in c.stats.applied] for c in clients]

            # 1. the prefetch window opens on its timer
            clock[0] = START - LEAD
            service.tick(clock[0])
            await _until(lambda: all(s == ["prefetch"] for s in stages()))

            # 2. a 5-minute delay: nothing at the old start, live at the new one
            delayed = START + 5 * MINUTE
            service.command(Reschedule("final", delayed, None), clock[0] + 1)
            clock[0] = START
            assert service.tick(clock[0]) == []
            clock[0] = delayed
            service.tick(clock[0])
            await _until(lambda: all(s == ["prefetch", "live"] for s in stages()))

            # 3. an early end by the operator
            clock[0] = delayed + MINUTE
            service.command(EndNow("final"), clock[0])
            await _until(lambda: all(s == ["prefetch", "live", "ended"] for s in stages()))

            for c in clients:
                versions = [a.version for a in c.stats.applied]
                assert versions == sorted(set(versions))  # each stage once, versions increase
                assert c.stats.duplicates == 0 and c.stats.stale == 0
            assert gateway.stats()["connections"] == DEVICES
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
            await server.close()

    _run(main)


class _Unreliable(InProcessTransport):
    """The in-process transport, refusing frames while ``down`` (a broken fan-out)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def publish(self, channel: str, frame: bytes) -> None:
        if self.down:
            raise ConnectionError("fan-out down")
        super().publish(channel, frame)


def test_a_stage_the_fan_out_could_not_take_reaches_connected_and_reconnecting_devices() -> None:
    clock = [T0]
    service = LiveService(MemoryKV(), clock=lambda: clock[0])
    transport = _Unreliable()
    router = Router(transport)
    service.add_sink(router.publish_all, name="router")

    async def main() -> None:
        gateway = Gateway(router, SECRET, node_id="gw-1", clock=lambda: clock[0])
        server = await gateway.serve("127.0.0.1", 0)
        stop, late_stop = asyncio.Event(), asyncio.Event()

        def device(name: str, until: asyncio.Event) -> tuple[DeviceClient, asyncio.Task[None]]:
            token = tokens.issue(SECRET, name, ("event:final",), T0, 24 * 60 * MINUTE)
            client = DeviceClient(
                f"ws://127.0.0.1:{server.port}",
                token,
                ("event:final",),
                rng=random.Random(name),
                clock=lambda: clock[0],
            )
            return client, asyncio.create_task(client.run(until))

        connected, task = device("tv-on", stop)
        late, late_task = device("tv-late", late_stop)
        tasks = [task, late_task]
        try:
            await _until(lambda: gateway.subscriber_count("event:final") == 2)
            service.command(Create("final", "The Final", START, None, LEAD), clock[0])
            clock[0] = START - LEAD
            service.tick(clock[0])
            await _until(lambda: [a.stage for a in late.stats.applied] == ["prefetch"])
            late_stop.set()  # this one goes away and misses what follows
            await asyncio.wait_for(late_task, WAIT_S)

            transport.down = True
            clock[0] += MINUTE
            service.command(StartNow("final"), clock[0])  # the fan-out refuses the trigger
            [status] = [s for s in service.sinks() if s.name == "router"]
            assert status.failing and status.pending == 1
            assert [a.stage for a in connected.stats.applied] == ["prefetch"]

            transport.down = False
            clock[0] = service.next_deadline() or 0  # the retry the service scheduled
            service.tick(clock[0])
            await _until(lambda: [a.stage for a in connected.stats.applied][-1:] == ["live"])

            # the device that was away reconnects and catches up from the channel's log
            late_again, again_task = device("tv-late", stop)
            tasks.append(again_task)
            await _until(lambda: [a.stage for a in late_again.stats.applied][-1:] == ["live"])
            [status] = [s for s in service.sinks() if s.name == "router"]
            assert (status.pending, status.failing, sum(status.dropped.values())) == (0, False, 0)
        finally:
            stop.set()
            late_stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
            await server.close()

    _run(main)
