"""Live events in the KV store, so a restart loses nothing.

Layout: namespace :data:`EVENTS_NS`, one record (:data:`RECORD`) holding **one item per event**,
keyed by the event id, valued by the msgpack-encoded :class:`~hopcast.live.schedule.LiveEvent`.
The KV API lists the items of a record but not the records of a namespace, and a deployment has
dozens of events, not millions, so one record is what makes :meth:`ScheduleStore.events` a scan.

Writes are last-write-wins on the event's version (the item's ``ts`` is the version, its token
0): a writer holding a stale event cannot overwrite a newer one, and replaying a save is a no-op.
The namespace has no TTL; finished events stay until a retention policy is added.

Restart: ``store.events()`` then :meth:`hopcast.live.producer.Producer.resume` re-arms every timer
and re-announces every current stage.
"""

from __future__ import annotations

import msgspec

from hopcast.errors import NotFound, StorageError
from hopcast.kv.base import KVStore
from hopcast.live.schedule import Command, Effect, LiveEvent, Persist, apply

#: The namespace of live events. The ``live.`` prefix keeps it apart from the graph's ``n.``/``g.``
#: namespaces and beside the payload store's ``live.payloads``.
EVENTS_NS = "live.events"

#: The single record that holds every event (see the module docstring for why one record).
RECORD = b"events"

#: The namespace has no TTL, so reads never depend on the time; this is the ``now`` they pass.
_READ_NOW = 0

#: LWW tie-breaker: the version alone orders writes, equal versions are replays.
_TOKEN = 0

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LiveEvent)


class ScheduleStore:
    """Saves and loads live events through a :class:`~hopcast.kv.base.KVStore`.

    Thread-safe as the KV store is. :meth:`execute` is the usual entry point: it reads, applies
    and saves in one write transaction, so concurrent commands on one event serialise.
    """

    def __init__(self, kv: KVStore) -> None:
        self._kv = kv
        kv.configure(EVENTS_NS, None)

    def save(self, event: LiveEvent) -> bool:
        """Store ``event`` unless the stored version is the same or newer.

        Returns:
            True if written; False if a same-or-newer version is stored (a stale writer or a
            replay): the caller must drop the effects that came with this event.

        Raises:
            StorageError: the backend failed.
        """
        with self._kv.writer() as w:
            return w.put_lww(
                EVENTS_NS, RECORD, _key(event.id), _encoder.encode(event), event.version, _TOKEN
            )

    def get(self, event_id: str) -> LiveEvent | None:
        """The stored event, or None.

        Raises:
            StorageError: the backend failed or the stored record is corrupt.
        """
        item = self._kv.get(EVENTS_NS, RECORD, _key(event_id), _READ_NOW)
        return None if item is None else _decode(event_id, item.value)

    def load(self, event_id: str) -> LiveEvent:
        """The stored event.

        Raises:
            NotFound: no event has this id.
            StorageError: the backend failed or the stored record is corrupt.
        """
        event = self.get(event_id)
        if event is None:
            raise NotFound(f"no live event {event_id!r}")
        return event

    def events(self) -> list[LiveEvent]:
        """Every stored event, in event-id order.

        Raises:
            StorageError: the backend failed or a stored record is corrupt.
        """
        with self._kv.reader() as r:
            items = list(r.scan(EVENTS_NS, RECORD, _READ_NOW))
        return [_decode(i.key.decode(), i.value) for i in items]

    def execute(self, command: Command, now: int) -> tuple[LiveEvent, list[Effect]]:
        """Apply ``command`` to the stored event and store the result, atomically.

        Steps: 1. read the event inside a write transaction; 2.
        :func:`~hopcast.live.schedule.apply`; 3. save it (if anything changed) before the
        transaction commits.

        Returns:
            The new event and the effects still to perform (the :class:`Persist` is done and
            left out). Feed them to the producer only now that they are stored.

        Raises:
            IllegalTransition, NotFound, InvalidInput: from :func:`apply`; nothing is stored.
            StorageError: the backend failed; nothing is stored.
        """
        key = _key(command.event_id)
        with self._kv.writer() as w:
            item = w.get(EVENTS_NS, RECORD, key)  # 1
            stored = (
                None if item is None or item.tombstone else _decode(command.event_id, item.value)
            )
            event, effects = apply(stored, command, now)  # 2
            if effects:  # 3
                w.put_lww(EVENTS_NS, RECORD, key, _encoder.encode(event), event.version, _TOKEN)
        return event, [e for e in effects if not isinstance(e, Persist)]


def _key(event_id: str) -> bytes:
    return event_id.encode()


def _decode(event_id: str, raw: bytes) -> LiveEvent:
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise StorageError(f"stored live event {event_id!r} is corrupt: {exc}") from exc
