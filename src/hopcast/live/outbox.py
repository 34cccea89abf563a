"""Frames on their way to many connections, written a chunk at a time so the loop stays free.

Writing one frame to a WebSocket costs 15-30 µs of the event loop (framing, the transport's
``write`` system call); a trigger for 10,000 devices written in one go keeps the loop busy for
a quarter of a second or more, and during that time no HTTP request is answered, no heartbeat
goes out and no timer fires. :class:`Outbox` takes ``(recipients, frame)`` without writing
anything but the smallest batches, and a task writes the queue **at most** :data:`CHUNK`
connection-writes at a time, yielding to the loop (``await asyncio.sleep(0)``) in between.

Contract:

* **Order.** Frames are written in the order :meth:`Outbox.send` took them, each to its
  recipients before the next frame starts, so every connection receives its frames in order.
* **Recipients are fixed when a frame is sent.** :meth:`~Outbox.send` copies the recipients,
  so a connection that subscribes afterwards is not written a frame queued before it
  subscribed (its catch-up already holds it), and one that subscribes before is written it.
* **Delivery is not tied to the caller.** A command that queued a frame has done its part; the
  outbox's own task writes it, whatever happens to the HTTP request that caused it. Nothing
  waits for a slow connection (the writer skips closed ones; the gateway evicts backlogged
  ones), so a frame queued is written unless the outbox is closed (shutdown: devices resume
  from their positions when they reconnect).
* Not thread-safe: call it from the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

C = TypeVar("C")

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry(Generic[C]):
    frame: bytes
    targets: list[C]
    done: int = 0  # targets written so far


#: Connection-writes per slice of the event loop. Measured on the 2-core benchmark host: 15-31 µs
#: per write with 3,000 loopback connections and the clients idle, 27-48 µs while 10,000
#: devices in client processes compete for the cores (bench/looplag.py: 10,000 written in
#: 275-480 ms). 500 writes take 8-24 ms, which leaves room within the ~50 ms a slice may take
#: for what else runs in the same loop iteration: there, 500 measured 27-47 ms of loop lag at
#: most per go-live, 1,000 measured 64-113 ms.
CHUNK: Final = 500

#: Writes recipients a frame; a gateway passes ``websockets.broadcast`` (skips closed ones).
Writer = Callable[[Sequence[C], bytes], None]


class Outbox(Generic[C]):
    """A FIFO of frames and their recipients, written in chunks by a task of its own.

    Args:
        write: writes one frame to a list of recipients, never waiting.
        chunk: connection-writes per loop slice (:data:`CHUNK`).
    """

    def __init__(self, write: Writer[C], *, chunk: int = CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self._write = write
        self._chunk = chunk
        self._queue: deque[_Entry[C]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        #: Frames written and connection-writes made so far.
        self.frames = 0
        self.writes = 0

    @property
    def pending(self) -> int:
        """Connection-writes queued and not made yet."""
        return sum(len(e.targets) - e.done for e in self._queue)

    def send(self, recipients: Collection[C], frame: bytes) -> None:
        """Queue ``frame`` for every connection in ``recipients`` now (copied).

        A batch of at most :data:`CHUNK` with nothing queued before it is written at once (no
        task, no delay); anything else is written by the outbox's task.
        """
        if self._closed or not recipients:
            return
        if not self._queue and len(recipients) <= self._chunk:
            targets = list(recipients)
            try:
                self._write(targets, frame)
            except Exception:
                logger.exception("writing a frame to %d connections failed", len(targets))
            self.frames += 1
            self.writes += len(targets)
            return
        self._queue.append(_Entry(frame, list(recipients)))
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="outbox")

    async def drain(self) -> None:
        """Wait until everything queued so far is written (or the outbox closed)."""
        await self._idle.wait()

    def close(self) -> None:
        """Drop what is queued and stop the task; later sends are ignored."""
        self._closed = True
        self._queue.clear()
        self._idle.set()
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the task to end."""
        self.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pump(self) -> None:
        """Write at most ``chunk`` connection-writes, yield, repeat until the queue is empty."""
        while self._queue:
            budget = self._chunk
            while budget and self._queue:
                entry = self._queue[0]
                start = entry.done
                end = min(len(entry.targets), start + budget)
                try:
                    self._write(entry.targets[start:end], entry.frame)
                except Exception:  # a writer bug must not stall every frame behind it
                    logger.exception("writing a frame to %d connections failed", end - start)
                self.writes += end - start
                budget -= end - start
                entry.done = end
                if end == len(entry.targets):
                    self._queue.popleft()
                    self.frames += 1
            await asyncio.sleep(0)  # let requests, timers and heartbeats run
        self._idle.set()
