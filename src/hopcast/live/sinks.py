"""Trigger delivery to sinks: in order, retried with backoff, bounded, counted.

A :class:`~hopcast.live.service.LiveService` hands every trigger it emits to its sinks (the
router that feeds the gateways, the console's reports, the metrics). A sink can fail — the
router's transport refuses a frame, a bug raises — and a trigger it could not take must not
vanish: a device would then miss a stage change with nothing recording it. :class:`Delivery`
keeps, per sink, the triggers it has not taken yet:

1. Every trigger is **queued** for every sink, in the order emitted, and the sink is handed its
   whole queue in one call (the usual case: the queue holds just the new triggers).
2. A sink that **raises** keeps its queue; it is tried again after a backoff
   (:data:`RETRY_FIRST_US`, doubling per failure in a row up to :data:`RETRY_MAX_US`), for as
   long as it fails, and new triggers queue behind the old ones, so order holds. The caller
   drives the retries with the time passed in (:meth:`Delivery.retry`; the live service's timer
   loop wakes at :meth:`Delivery.next_retry`). A sink given a list again after a failure may
   already have taken part of it: sinks apply triggers idempotently by ``(event, version)``
   (the router does; the at-least-once contract of the producer already asks for it).
3. A sink that raises :class:`~hopcast.errors.InvalidInput` says a trigger is malformed, which
   no retry mends: the queue is handed over one trigger at a time to find it, and that trigger
   is **rejected** (dropped, counted, logged with its identity); the others go on.
4. The queue is **bounded** (:data:`MAX_PENDING`). When it is full, a trigger superseded by a
   newer pending one of the same event is dropped first (devices need only the newest stage,
   and the ``state`` snapshot carries it); if there is none, the oldest. Every drop is counted
   by reason, and after an ``overflow`` drop the sink is **re-synchronised** once it takes
   triggers again: it is handed the current stage of every stored event (the producer's
   re-announcement, same versions), so its channel logs, and every device that resumes from
   them, end on the right stage.

Prometheus series (:class:`SinkCollector`, registered by the API on its registry):
``hopcast_live_triggers_delivered_total{sink}``, ``hopcast_live_sink_failures_total{sink}``
(failed calls), ``hopcast_live_triggers_pending{sink}`` (queued, not yet taken),
``hopcast_live_triggers_dropped_total{sink,reason}`` (``superseded``, ``overflow``,
``rejected``), ``hopcast_live_sink_resyncs_total{sink}`` and ``hopcast_live_sink_failing{sink}``
(1 while the sink's last call failed).

Not thread-safe: the live service calls it under its lock. Pure apart from calling the sinks and
logging: time is passed in.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hopcast.errors import ConfigError, InvalidInput
from hopcast.live.producer import Trigger

logger = logging.getLogger("hopcast.live")

#: Receives the triggers of one delivery, in the order emitted (never an empty list).
TriggerSink = Callable[[Sequence[Trigger]], None]

#: Triggers queued per sink while it fails. An event makes about six stage changes in its life
#: and a deployment schedules dozens of events at a time, so 4,096 holds every trigger of
#: hundreds of events' lifetimes: an outage that outlasts it has lost nothing but intermediate
#: stages (the re-synchronisation restores the current ones). A queued trigger costs ~150
#: bytes, so a full queue is ~0.6 MB per sink.
MAX_PENDING = 4_096
#: The first retry of a failed sink, in µs: soon enough that a blip delays a trigger by a
#: tenth of a second, long enough not to spin on a sink that is down.
RETRY_FIRST_US = 100_000
#: The longest pause between retries, in µs: a sink that comes back gets its triggers within
#: five seconds, and one call every five seconds costs nothing while it stays down.
RETRY_MAX_US = 5_000_000

#: Why a trigger was dropped (the ``reason`` label of ``hopcast_live_triggers_dropped_total``).
SUPERSEDED = "superseded"
OVERFLOW = "overflow"
REJECTED = "rejected"
REASONS = (SUPERSEDED, OVERFLOW, REJECTED)


def retry_delay(failures: int) -> int:
    """The pause (µs) after ``failures`` failed calls in a row: 0.1 s, 0.2 s, … up to 5 s."""
    return min(RETRY_MAX_US, RETRY_FIRST_US << min(failures - 1, 32))


def sink_name(sink: TriggerSink) -> str:
    """A readable name for a sink: a function's or bound method's qualified name
    (``Router.publish_all``), else its class's."""
    name = getattr(sink, "__qualname__", None)
    return name if isinstance(name, str) else type(sink).__qualname__


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """One sink's delivery state (for metrics, logs and tests)."""

    name: str
    pending: int
    delivered: int
    failures: int
    failing: bool
    retry_at: int | None
    dropped: dict[str, int]
    resyncs: int


class _Sink:
    """One sink, its queue and its counters."""

    def __init__(self, name: str, sink: TriggerSink, capacity: int) -> None:
        self.name = name
        self.sink = sink
        self.capacity = capacity
        self.pending: deque[Trigger] = deque()
        self.in_a_row = 0  # failed calls since the last success
        self.retry_at: int | None = None
        self.resync = False  # an overflow drop happened: hand over the current stages
        self.delivered = 0
        self.failures = 0
        self.resyncs = 0
        self.dropped = dict.fromkeys(REASONS, 0)

    def queue(self, triggers: Iterable[Trigger]) -> None:
        for trigger in triggers:
            if len(self.pending) >= self.capacity:
                self._make_room()
            self.pending.append(trigger)

    def _make_room(self) -> None:
        """Drop one queued trigger: the oldest one a newer pending trigger of its event
        supersedes, else the oldest (see the module docstring, step 4)."""
        newest: dict[str, int] = {}
        for trigger in self.pending:
            newest[trigger.event_id] = max(newest.get(trigger.event_id, 0), trigger.version)
        for i, trigger in enumerate(self.pending):
            if trigger.version < newest[trigger.event_id]:
                del self.pending[i]
                self._drop(trigger, SUPERSEDED)
                return
        self._drop(self.pending.popleft(), OVERFLOW)
        self.resync = True

    def _drop(self, trigger: Trigger, reason: str) -> None:
        self.dropped[reason] += 1
        total = sum(self.dropped.values())
        if reason == REJECTED or total & (total - 1) == 0:  # every rejection; 1, 2, 4, … drops
            logger.error(
                "live trigger sink %s: dropped %s/%s v%d (%s; %d dropped so far)",
                self.name,
                trigger.event_id,
                trigger.stage.value,
                trigger.version,
                reason,
                total,
            )

    def status(self) -> SinkStatus:
        return SinkStatus(
            self.name,
            len(self.pending),
            self.delivered,
            self.failures,
            self.in_a_row > 0,
            self.retry_at,
            dict(self.dropped),
            self.resyncs,
        )


class Delivery:
    """The sinks of one live service and what each has not taken yet (module docstring).

    Args:
        current: the current stage of every stored event as triggers (their original
            versions and times): what a sink is re-synchronised with after an overflow. It may
            raise; the re-synchronisation is then tried again after :data:`RETRY_MAX_US`.
        capacity: triggers queued per sink (:data:`MAX_PENDING`).

    Raises:
        ConfigError: ``capacity`` < 1.
    """

    def __init__(
        self, current: Callable[[], list[Trigger]], *, capacity: int = MAX_PENDING
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"a sink's queue holds at least one trigger, not {capacity}")
        self._current = current
        self._capacity = capacity
        self._sinks: list[_Sink] = []

    def add(self, sink: TriggerSink, name: str | None = None) -> Callable[[], None]:
        """Deliver every future trigger to ``sink`` too (``name`` labels its metrics; default
        :func:`sink_name`, made unique); returns a function that removes it."""
        base = name or sink_name(sink)
        taken = {s.name for s in self._sinks}
        label, n = base, 1
        while label in taken:
            n += 1
            label = f"{base}#{n}"
        entry = _Sink(label, sink, self._capacity)
        self._sinks.append(entry)

        def remove() -> None:
            if entry in self._sinks:
                self._sinks.remove(entry)

        return remove

    def publish(self, triggers: Sequence[Trigger], now: int) -> None:
        """Queue ``triggers`` for every sink, then deliver to each sink not waiting to retry."""
        if not triggers:
            return
        for entry in list(self._sinks):
            entry.queue(triggers)
            if entry.retry_at is None or now >= entry.retry_at:
                self._deliver(entry, now)

    def retry(self, now: int) -> None:
        """Deliver to every sink whose retry is due at ``now``."""
        for entry in list(self._sinks):
            if entry.retry_at is not None and now >= entry.retry_at:
                self._deliver(entry, now)

    def next_retry(self) -> int | None:
        """When the earliest retry is due (µs), or None when every sink is up to date."""
        return min((s.retry_at for s in self._sinks if s.retry_at is not None), default=None)

    def status(self) -> list[SinkStatus]:
        """Every sink's delivery state, in the order added."""
        return [entry.status() for entry in self._sinks]

    @property
    def pending(self) -> int:
        """Triggers queued over all sinks."""
        return sum(len(entry.pending) for entry in self._sinks)

    # -- delivering ------------------------------------------------------------------------------

    def _deliver(self, entry: _Sink, now: int) -> None:
        """Steps: 1. hand the sink its queue; 2. once the queue is empty, the
        re-synchronisation an overflow asked for, in a call of its own (outside the bounded
        queue, so it cannot overflow it)."""
        if not self._hand(entry, entry.pending, now):  # 1
            return
        if entry.resync:  # 2
            try:
                current = deque(self._current())
            except Exception:
                logger.exception(
                    "live trigger sink %s: could not read the current stages", entry.name
                )
                entry.retry_at = now + RETRY_MAX_US  # entry.resync stays set: tried again
                return
            logger.warning(
                "live trigger sink %s: re-synchronising %d event(s) after dropped triggers",
                entry.name,
                len(current),
            )
            if self._hand(entry, current, now):
                entry.resync = False
                entry.resyncs += 1

    def _hand(self, entry: _Sink, triggers: deque[Trigger], now: int) -> bool:
        """Hand ``triggers`` to the sink, removing what it took; False if a call failed (a
        retry is scheduled).

        Steps: 1. everything in one call; 2. on InvalidInput, one trigger at a time, rejecting
        the refused ones; 3. on any other error, schedule a retry."""
        if not triggers:
            return True
        batch = tuple(triggers)
        try:
            entry.sink(batch)  # 1
        except InvalidInput:
            while triggers:  # 2
                trigger = triggers[0]
                try:
                    entry.sink((trigger,))
                except InvalidInput as exc:
                    triggers.popleft()
                    entry._drop(trigger, REJECTED)
                    logger.error("live trigger sink %s refused a trigger: %s", entry.name, exc)
                except Exception as exc:
                    self._failed(entry, now, exc)  # 3
                    return False
                else:
                    triggers.popleft()
                    entry.delivered += 1
        except Exception as exc:
            self._failed(entry, now, exc)  # 3
            return False
        else:
            triggers.clear()
            entry.delivered += len(batch)
        self._recovered(entry)
        return True

    def _failed(self, entry: _Sink, now: int, exc: Exception) -> None:
        entry.in_a_row += 1
        entry.failures += 1
        delay = retry_delay(entry.in_a_row)
        entry.retry_at = now + delay
        if entry.in_a_row & (entry.in_a_row - 1) == 0:  # 1, 2, 4, 8, … failures in a row
            logger.error(
                "live trigger sink %s failed (%s: %s); %d trigger(s) kept, retry %d in %.1f s",
                entry.name,
                type(exc).__name__,
                exc,
                len(entry.pending),
                entry.in_a_row,
                delay / 1_000_000,
                exc_info=entry.in_a_row == 1,
            )

    def _recovered(self, entry: _Sink) -> None:
        if entry.in_a_row:
            logger.warning(
                "live trigger sink %s took its triggers again after %d failed call(s)",
                entry.name,
                entry.in_a_row,
            )
        entry.in_a_row = 0
        entry.retry_at = None


class SinkCollector(Collector):
    """The sinks' Prometheus series (module docstring), read at scrape time from ``status``
    (:meth:`Delivery.status`, called under whatever lock guards the delivery)."""

    def __init__(self, status: Callable[[], list[SinkStatus]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        prefix = "hopcast_live_"
        delivered = CounterMetricFamily(
            prefix + "triggers_delivered", "Triggers a sink took.", labels=("sink",)
        )
        failures = CounterMetricFamily(
            prefix + "sink_failures",
            "Calls to a trigger sink that raised (its triggers stay queued and are retried).",
            labels=("sink",),
        )
        pending = GaugeMetricFamily(
            prefix + "triggers_pending",
            "Triggers queued for a sink that has not taken them yet.",
            labels=("sink",),
        )
        dropped = CounterMetricFamily(
            prefix + "triggers_dropped",
            "Triggers a sink never got: superseded or overflow (its queue was full), rejected "
            "(the sink refused it as malformed).",
            labels=("sink", "reason"),
        )
        resyncs = CounterMetricFamily(
            prefix + "sink_resyncs",
            "Times a sink was handed every event's current stage after dropped triggers.",
            labels=("sink",),
        )
        failing = GaugeMetricFamily(
            prefix + "sink_failing",
            "1 while a sink's last call failed (its triggers wait for a retry).",
            labels=("sink",),
        )
        for s in self._status():
            delivered.add_metric((s.name,), s.delivered)
            failures.add_metric((s.name,), s.failures)
            pending.add_metric((s.name,), s.pending)
            for reason, count in s.dropped.items():
                dropped.add_metric((s.name, reason), count)
            resyncs.add_metric((s.name,), s.resyncs)
            failing.add_metric((s.name,), 1 if s.failing else 0)
        yield from (delivered, failures, pending, dropped, resyncs, failing)

    def describe(self) -> Iterator[Metric]:
        return self.collect()
