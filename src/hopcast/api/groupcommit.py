"""Group commit of concurrent ``POST /v1/mutations``: one durable write for many requests.

A durable LMDB commit waits for ``fsync`` (about 5 ms on a common SSD, more under load), and the
store has one writer at a time, so one commit per request caps a server near 200 write requests
a second however many arrive, and each waits behind all the others (88-180 ms at p50 under the
read mix, measured before this module).

Here each app has one :class:`GroupCommitter`: a bounded queue and one writer thread. A request
hands its body to :meth:`GroupCommitter.submit` and awaits its own answer. A small body is
decoded and validated there and then (:data:`INLINE_PREPARE_BYTES`; bad input is answered at
once with its 4xx and never queued), a large one later on the writer thread. The thread takes
every request queued meanwhile (up to :data:`MAX_GROUP_BYTES` of bodies), decodes and validates
the large ones each on its own (a bad body fails its own request with its own 4xx, nothing
else), and applies all the valid ones in **one** store write -- one :meth:`GraphStore.apply`
per request, all inside one transaction, so each request gets its own ``applied``/``skipped``
counts (:class:`hopcast.graph.groupwriter.Joined`) -- and answers every request only after that
write is committed (durable on a store opened with ``sync``). So under load each commit carries
many requests, and when the server is idle a request is committed at once (no waiting for
company). The event loop never runs a write: reads go on while a group commits (LMDB readers do
not wait for the writer). On an LMDB store the group's write runs in a writer process that
opens the same store (:class:`hopcast.graph.groupwriter.WriterProcess`: a thread would wait for
the busy event loop to release the interpreter lock after every LMDB call); on Redis (round
trips, which release the lock) and in memory it runs on the thread.

If a group's write fails (a store refusal of one request's data, or the store failing), nothing
of it was written; each of its requests is then applied on its own, so a refusal reaches only
the request that caused it (its 422 or 503 is the one a lone request would get).

Backpressure: at most :data:`MAX_QUEUED_REQUESTS` requests or :data:`MAX_QUEUED_BYTES` of
bodies wait; beyond that a request is refused at once with **503** ``write_queue_full`` and
``Retry-After`` (nothing written; retrying later is safe, writes are idempotent on ``id``).

Several server processes (``hopcast serve --workers N``) each run their own committer; LMDB
serialises their writers across processes, and Redis applies each write atomically.

Metrics (in the app's registry): ``hopcast_write_group_requests`` (requests per commit, a
histogram), ``hopcast_write_queue_depth`` (requests waiting), ``hopcast_write_commit_seconds``
(time of each group's write, commit included), ``hopcast_write_stage_seconds{stage}`` (where a
request's time went: :data:`STAGES`) and ``hopcast_write_queue_full_total``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.concurrency import run_in_threadpool

from hopcast.api.errors import ApiError
from hopcast.errors import StorageError
from hopcast.graph.groupwriter import Joined, WriterProcess, reopen_spec
from hopcast.graph.mutations import Mutation
from hopcast.graph.store import ApplyResult, GraphStore

logger = logging.getLogger("hopcast.api")

#: Requests that may wait for the writer. At a commit every ~5-10 ms this is well over a
#: second of writes at the rates one process sustains; a queue longer than that only adds
#: latency, so a client is better told to come back (503) than kept waiting.
MAX_QUEUED_REQUESTS = 1024
#: Bytes of request bodies that may wait (64 MiB): bounds the memory a burst of large bodies
#: (each up to the 1 MiB body limit) can hold while queued.
MAX_QUEUED_BYTES = 64 << 20
#: Bodies per group, in bytes: a group's write is no larger than the largest single request
#: (the 1 MiB body limit), so it holds the store's single writer lock no longer than one
#: request could on its own. A group always takes at least one request.
MAX_GROUP_BYTES = 1 << 20
#: What a refused request is told to wait, in seconds (``Retry-After``): a full queue drains
#: in well under a second; a whole second keeps retries from arriving in a burst.
RETRY_AFTER_S = 1
#: Bounds of the group-size histogram (requests per commit).
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Bounds of the commit-time histogram, in seconds (an fsync is milliseconds).
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0)
#: Bounds of the per-stage histogram, in seconds: a stage of a write under load is from well
#: under a millisecond (the writer was free) to tens of milliseconds (behind a busy loop).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0)
#: The stages of a queued write request (``hopcast_write_stage_seconds{stage}``): ``wait``
#: from queued to taken by the writer thread, ``write`` from taken to answered (decoding a large
#: body, the group's store write and commit, the writer process's round trip), ``return`` from
#: answered to the request's handler running again on its event loop.
STAGES = ("wait", "write", "return")
#: Bodies up to this size (16 KiB, about 100 mutations: ~2 ms of decoding and validation) are
#: decoded and validated on the event loop as they arrive; larger ones on the writer thread, so
#: that a 1 MiB body (~150 ms of decoding) never holds the loop. Work handed to the writer
#: thread waits for the interpreter lock whenever the loop is busy with reads: under load a
#: small body's hop costs more than its decoding.
INLINE_PREPARE_BYTES = 16 << 10
#: The writer thread ends after this long without a request (the next one starts it again,
#: which costs well under a millisecond), so an app that is dropped without being shut down
#: (tests, embedders) does not keep a thread, and through it the store, alive.
IDLE_EXIT_S = 10.0
#: How long closing waits for the queued requests to be committed.
CLOSE_TIMEOUT_S = 30.0
#: The interpreter's switch interval while a served app runs (seconds; Python's default is
#: 5 ms). The writer thread needs the interpreter lock about three times per group (taking it,
#: after sending it to the writer process, after the reply); while the event loop is busy with
#: reads it gets the lock only when the loop's interval expires, so each of those waits cost up
#: to 5 ms: measured under the read mix, the wait for the lock after a request was queued was
#: 0.4 ms at p50 but 7.8 ms at p99 (and 9-35 ms at p50 on a loaded machine). Half a millisecond
#: bounds each wait at that; the cost is a switch more often when two threads both run, which
#: in a served process is rare (the loop's thread, and briefly the writer thread).
SWITCH_INTERVAL_S = 0.0005

#: Decodes and validates one request body: the mutations to write (canonical, validated for
#: the store's schema) and the JSON entries of those expired on arrival; raises the request's
#: own error (an ApiError or a hopcast error) for bad input.
Prepare = Callable[[bytes], tuple[list[Mutation], list[dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request's write did: the store's result and the mutations expired on arrival."""

    result: ApplyResult
    expired: list[dict[str, Any]]


@dataclass(slots=True, eq=False)
class _Pending:
    raw: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Outcome]
    prepared: bool = False
    kept: list[Mutation] = field(default_factory=list)
    expired: list[dict[str, Any]] = field(default_factory=list)
    result: ApplyResult | None = None
    error: BaseException | None = None
    queued_at: float = 0.0
    taken_at: float = 0.0
    answered_at: float = 0.0


def _settle(
    future: asyncio.Future[Outcome], outcome: Outcome | None, error: BaseException | None
) -> None:
    if future.done():  # the request was cancelled (client gone); its write stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert outcome is not None
        future.set_result(outcome)


class GroupCommitter:
    """Applies queued mutation requests in groups, one store write per group.

    Thread-safe; :meth:`submit` is called on an event loop. The writer thread starts with the
    first request (and again after :meth:`close`).

    Args:
        store: the graph store to write.
        prepare: decodes and validates one body (runs on the writer thread).
        registry: where the metrics go.
        max_queued_requests, max_queued_bytes: the queue's bounds (503 beyond them).
        max_group_bytes: most body bytes in one group (at least one request per group).
    """

    def __init__(
        self,
        store: GraphStore,
        prepare: Prepare,
        registry: CollectorRegistry,
        *,
        max_queued_requests: int = MAX_QUEUED_REQUESTS,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        max_group_bytes: int = MAX_GROUP_BYTES,
        inline_prepare_bytes: int = INLINE_PREPARE_BYTES,
        writer_process: bool = True,
    ) -> None:
        if max_queued_requests < 1 or max_queued_bytes < 1 or max_group_bytes < 1:
            raise ValueError("the group committer's bounds must be >= 1")
        self.store = store
        self._prepare = prepare
        self.max_queued_requests = max_queued_requests
        self.max_queued_bytes = max_queued_bytes
        self.max_group_bytes = max_group_bytes
        self.inline_prepare_bytes = inline_prepare_bytes
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._joined: Joined | None = None
        try:
            self._joined = Joined(store)
        except Exception:  # a store this view cannot join: correct, one commit per request
            logger.exception("group commit unavailable; one commit per mutation request")
        spec = reopen_spec(store.kv) if writer_process else None
        self._process = None if spec is None else WriterProcess(spec, store.schema)
        self.group_requests = Histogram(
            "hopcast_write_group_requests",
            "Mutation requests committed together in one store write",
            buckets=GROUP_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "hopcast_write_queue_depth",
            "Mutation requests waiting for the writer",
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "hopcast_write_commit_seconds",
            "Time of one group's store write, commit (fsync) included",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "hopcast_write_stage_seconds",
            "Time of each stage of a queued mutation request: wait (queued until the writer "
            "takes it), write (its group's write and commit), return (until its handler runs "
            "again on the event loop)",
            ("stage",),
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self._stages = [self.stage_seconds.labels(stage) for stage in STAGES]
        self.queue_full = Counter(
            "hopcast_write_queue_full",
            "Mutation requests refused with 503 because the write queue was full",
            registry=registry,
        )

    # -- the event loop's side ---------------------------------------------------------------

    async def submit(self, raw: bytes) -> Outcome:
        """Queue one request body and wait until its write is committed.

        Raises:
            ApiError: 503 ``write_queue_full`` (with ``Retry-After``) when the queue is full;
                nothing is written.
            Exception: the request's own error (bad input: its 4xx; the store: its 503).
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(raw, loop, loop.create_future())
        if len(raw) <= self.inline_prepare_bytes:  # its own bad input raises here
            pending.kept, pending.expired = self._prepare(raw)
            pending.prepared = True
            if not pending.kept:  # nothing to write
                return Outcome(ApplyResult(0, 0), pending.expired)
        with self._cond:
            if self._queue and (
                len(self._queue) >= self.max_queued_requests
                or self._queued_bytes + len(raw) > self.max_queued_bytes
            ):
                self.queue_full.inc()
                raise ApiError(
                    503,
                    "write_queue_full",
                    f"{len(self._queue)} write requests are waiting for the store; retry after "
                    f"{RETRY_AFTER_S} s (nothing was written)",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            pending.queued_at = perf_counter()
            self._queue.append(pending)
            self._queued_bytes += len(raw)
            self.queue_depth.set(len(self._queue))
            if self._thread is None:  # (re)start: the first request, or after close()
                self._closing = False
                self._thread = threading.Thread(
                    target=self._run, name="hopcast-group-commit", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            return await pending.future
        finally:
            if pending.answered_at:  # else cancelled before its answer (the client left)
                wait, write, back = self._stages
                wait.observe(pending.taken_at - pending.queued_at)
                write.observe(pending.answered_at - pending.taken_at)
                back.observe(perf_counter() - pending.answered_at)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Commit what is queued, then stop the writer thread and process (a later submit
        restarts them)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._process is not None:
            self._process.close()

    def start(self) -> None:
        """Start the writer process now (else the first group starts it). A failure is logged;
        the first group tries again."""
        if self._process is not None:
            try:
                self._process.start()
            except StorageError as exc:
                logger.error("%s", exc)

    def in_this_process(self) -> None:
        """Apply groups on the writer thread from now on, not in a writer process."""
        process, self._process = self._process, None
        if process is not None:
            process.close()

    def router(self) -> APIRouter:
        """No routes: a lifespan that starts the writer process with the app (so that the
        first write does not wait for it), shortens the interpreter's switch interval to
        :data:`SWITCH_INTERVAL_S` while the app runs, and stops the writer when the app shuts
        down."""

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            previous = sys.getswitchinterval()
            sys.setswitchinterval(min(previous, SWITCH_INTERVAL_S))
            await run_in_threadpool(self.start)
            try:
                yield
            finally:
                await run_in_threadpool(self.close)
                if sys.getswitchinterval() == min(previous, SWITCH_INTERVAL_S):
                    sys.setswitchinterval(previous)  # unless someone else has changed it since

        return APIRouter(lifespan=lifespan)

    # -- the writer thread -------------------------------------------------------------------

    def _take(self) -> list[_Pending] | None:
        """The next group (None: closing and nothing left)."""
        with self._cond:
            while not self._queue:
                if self._closing or (not self._cond.wait(IDLE_EXIT_S) and not self._queue):
                    # Under the lock: a request queued after this starts a new thread.
                    self._thread = None
                    return None
            group = [self._queue.popleft()]
            size = len(group[0].raw)
            while self._queue and size + len(self._queue[0].raw) <= self.max_group_bytes:
                size += len(self._queue[0].raw)
                group.append(self._queue.popleft())
            self._queued_bytes -= size
            self.queue_depth.set(len(self._queue))
            now = perf_counter()
            for p in group:
                p.taken_at = now
            return group

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():  # it died of an exception
                    self._thread = None

    def _serve(self) -> None:
        while (group := self._take()) is not None:
            try:
                self._handle(group)
            except BaseException as exc:  # never leave a request waiting forever
                for p in group:
                    if p.result is None and p.error is None:
                        p.error = exc
                self._answer(group)
                if not isinstance(exc, Exception):
                    raise
                logger.exception("group commit failed")

    def _handle(self, group: list[_Pending]) -> None:
        for p in group:
            if p.prepared:
                continue
            try:
                p.kept, p.expired = self._prepare(p.raw)
            except Exception as exc:  # its own bad input: its own answer
                p.error = exc
        writing = [p for p in group if p.error is None and p.kept]
        for p in group:
            if p.error is None and not p.kept:
                p.result = ApplyResult(0, 0)
        if writing:
            t0 = perf_counter()
            self._write(writing)
            self.commit_seconds.observe(perf_counter() - t0)
            self.group_requests.observe(len(writing))
        self._answer(group)

    def _write(self, writing: list[_Pending]) -> None:
        batches = [p.kept for p in writing]
        touched: set[str] = set()
        if self._process is not None:
            results, touched = self._process.apply(batches)
        elif self._joined is not None:
            results = self._joined.apply(batches)
            touched = set(self._joined.touched)
        else:
            results = []
            for batch in batches:
                try:
                    results.append(self.store.apply(batch, validated=True))
                except Exception as exc:
                    results.append(exc)
        for p, result in zip(writing, results, strict=True):
            if isinstance(result, Exception):
                p.error = result
            else:
                p.result = result
        if touched:
            # The graph store's own listeners (the query engine's node cache), after the
            # commit, as GraphStore.apply calls them for a write it commits itself.
            for listener in self.store._listeners:
                listener(touched)

    def _answer(self, group: list[_Pending]) -> None:
        now = perf_counter()
        for p in group:
            p.answered_at = now
        for p in group:
            outcome = None if p.result is None else Outcome(p.result, p.expired)
            error = p.error
            if outcome is None and error is None:
                error = RuntimeError("the write was not attempted")
            with suppress(RuntimeError):  # its event loop is closed: nobody is waiting
                p.loop.call_soon_threadsafe(_settle, p.future, outcome, error)
