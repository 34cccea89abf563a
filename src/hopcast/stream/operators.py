"""Pure pipeline operators: Record → Event → … → Mutation, with dead letters instead of errors.

A pipeline (:class:`Pipeline`) is a decoder followed by steps:

1. a **decoder** turns a :class:`~hopcast.stream.record.Record` into an
   :class:`~hopcast.stream.record.Event` (:func:`decode_json`, :func:`decode_debezium`) or into
   nothing (a Debezium tombstone);
2. each **step** takes an event and returns an iterable of events (passed to the next step) and
   mutations (collected): :class:`Filter` and :class:`Project` narrow, :class:`SetTime`
   normalises the event time, :class:`Changelog` keeps a :class:`SideTable` current,
   :class:`Enrich` joins a side table, and a mapping (:mod:`hopcast.stream.mapping`) emits
   mutations;
3. every mutation's ``ts`` is checked (integer µs in the store's range) and, given a schema,
   the mutation is checked against it and put in its canonical form.

A pipeline built from a mapping file also has a compiled fast path (``fast``, see
:mod:`hopcast.stream.compiled`) that does all of the above in one generated function for an
ordinary record; every other record takes the decoder and steps, the reference.

A step signals a bad record by raising :class:`~hopcast.errors.RecordRejected`; the pipeline
catches it (and any other exception) and returns one
:class:`~hopcast.stream.deadletter.DeadLetter` for the record instead of its mutations. Nothing
raises out of :meth:`Pipeline.process`, and a record's mutations are all returned or none is.

Operators import no engine, broker or database, and never read the clock: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgspec

from hopcast.errors import OutOfBounds, RecordRejected, SchemaViolation
from hopcast.graph.keys import MAX_TS
from hopcast.graph.limits import (
    DEFAULT_MAX_FUTURE_US,
    EXPIRED,
    MAX_NODE_ID_BYTES,
    arrival_problem,
    id_problem,
)
from hopcast.graph.mutations import Mutation
from hopcast.graph.schema import Schema
from hopcast.stream.deadletter import DeadLetter, Reason
from hopcast.stream.fields import Condition, Template, TimeSpec, parse_path
from hopcast.stream.record import CDC_OPS, MISSING, Event, Record, make_event

#: Largest record value a pipeline accepts by default. Kafka's default message size limit is
#: 1 MiB; anything bigger is almost certainly not one member event.
DEFAULT_MAX_BYTES = 1 << 20

#: What one step returns: events for the next step, mutations for the output.
StepOutput = Iterable[Event | Mutation]
#: The output of a pipeline: a record's mutations, or its dead letter.
Output = Mutation | DeadLetter


class Step(Protocol):
    """One pipeline step. ``name`` appears in dead letters as the ``stage``."""

    @property
    def name(self) -> str: ...

    def __call__(self, event: Event) -> StepOutput: ...


# -- decoders ----------------------------------------------------------------------------------


_json_decode = msgspec.json.Decoder().decode


def _parse_json(record: Record) -> Any:
    if not record.value:
        raise RecordRejected(
            Reason.MALFORMED_JSON, "the record has no value (an empty line, or a null value)"
        )
    try:
        return _json_decode(record.value)
    except msgspec.DecodeError as exc:
        raise RecordRejected(Reason.MALFORMED_JSON, f"not JSON: {exc}") from None
    except RecursionError:
        raise RecordRejected(
            Reason.OUT_OF_BOUNDS, "JSON nested deeper than the decoder allows"
        ) from None


def decode_json(record: Record) -> Event:
    """A record whose value is one JSON object → an event with that object as its document.

    Raises:
        RecordRejected: ``malformed_json`` if the value is not UTF-8 JSON or not an object.
    """
    doc = _parse_json(record)
    if not isinstance(doc, dict):
        raise RecordRejected(
            Reason.MALFORMED_JSON, f"expected a JSON object, got {type(doc).__name__}"
        )
    position = record.position
    return make_event(
        record.source,
        position,
        doc,
        record.value,
        None,
        None,
        record.event_time,
        record.key,
        {},
        position.offset,
    )


def _envelope_time(payload: Mapping[str, Any], source: Mapping[str, Any]) -> int | None:
    """Generation time of a change: when the database made it (``source.ts_us``/``ts_ms``),
    else when the connector saw it (``ts_us``/``ts_ms``)."""
    for doc in (source, payload):
        for name, unit in (("ts_us", 1), ("ts_ms", 1_000)):
            value = doc.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value * unit
    return None


def decode_debezium(record: Record) -> Event | None:
    """A Debezium change event → an event with ``op``, ``table``, ``before``, ``after``, ``row``.

        Accepts the bare envelope and the ``{"schema": …, "payload": …}`` form (JSON converter with
        schemas enabled). An empty value (or a null payload) is the tombstone Debezium writes after
        a delete for log compaction: it carries no change and yields no event. A ``TRUNCATE``
        (``op: t``) carries no row: its ``row`` is None (see :class:`Changelog` and the mapping's
        ``truncate`` policy).

        The event time is the database's commit time (``source.ts_us`` or ``source.ts_ms``), else
        the connector's (``ts_us``/``ts_ms``), else the record's. The event's ``order`` (the tie
        break of equal times: every change of a transaction shares its commit time) is the change's
        own LSN (``source.lsn``, doubled, plus one for a create: the create half of a key change
    comes after its delete half) for a streamed change, else the record's offset (snapshot rows,
        connectors without an LSN): the same history gives the same order whatever the topic or
        slot is called.

        Raises:
            RecordRejected: ``malformed_json`` if not a JSON object; ``bad_envelope`` if ``op`` is
                not one of c, u, d, r, t, or the row images do not fit it (``after`` for c, r and
                u; ``before`` for d).
    """
    if not record.value:
        return None
    doc = _parse_json(record)
    if not isinstance(doc, dict):
        raise RecordRejected(
            Reason.MALFORMED_JSON, f"expected a JSON object, got {type(doc).__name__}"
        )
    if "payload" in doc and "schema" in doc:
        doc = doc["payload"]
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise RecordRejected(Reason.BAD_ENVELOPE, "'payload' must be an object")
    op = doc.get("op")
    if op not in CDC_OPS:
        raise RecordRejected(
            Reason.BAD_ENVELOPE, f"'op' must be one of c, u, d, r, t (got {_clip(op)})"
        )
    before, after = doc.get("before"), doc.get("after")
    for name, image in (("before", before), ("after", after)):
        if image is not None and not isinstance(image, dict):
            raise RecordRejected(Reason.BAD_ENVELOPE, f"{name!r} must be an object or null")
    row: dict[str, Any] | None
    if op == "t":
        row = None
    elif op == "d":
        if before is None:
            raise RecordRejected(Reason.BAD_ENVELOPE, "a delete ('d') needs 'before'")
        row = before
    else:
        if after is None:
            raise RecordRejected(Reason.BAD_ENVELOPE, f"op {op!r} needs 'after'")
        row = after
    source = doc.get("source") or {}
    if not isinstance(source, dict):
        raise RecordRejected(Reason.BAD_ENVELOPE, "'source' must be an object")
    table = source.get("table")
    table = table if isinstance(table, str) else None
    data = {
        "op": op,
        "table": table,
        "before": before,
        "after": after,
        "row": row,
        "source": source,
        "ts_ms": doc.get("ts_ms"),
    }
    event_time = _envelope_time(doc, source)
    lsn = source.get("lsn")
    if type(lsn) is not int or lsn < 0 or op == "r" or source.get("snapshot") not in _STREAMED:
        lsn = None
    return make_event(
        record.source,
        record.position,
        data,
        record.value,
        op,
        table,
        event_time if event_time is not None else record.event_time,
        record.key,
        {},
        # A key change is one WAL record made into a delete and a create (same LSN): the
        # create's order comes after the delete's.
        (lsn << 1 | (op == "c")) if lsn is not None else record.position.offset,
    )


#: ``source.snapshot`` of a change read from the log (Debezium: "false", or absent; "true",
#: "first", "last" and "incremental" mark snapshot rows, which share one LSN).
_STREAMED = frozenset({None, "false", False})


def _clip(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "…"


# -- filter, project, normalise ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filter:
    """Keep events for which ``condition`` holds; drop the rest (on purpose: not dead letters)."""

    condition: Condition
    name: str = "filter"

    @classmethod
    def where(cls, spec: Mapping[str, Any]) -> Filter:
        """Build from a condition mapping (see :class:`~hopcast.stream.fields.Condition`)."""
        return cls(Condition.parse(spec))

    def __call__(self, event: Event) -> StepOutput:
        return (event,) if self.condition.holds(event) else ()


@dataclass(frozen=True, slots=True)
class Project:
    """Keep only some fields of the document, under new names: ``{"profile": "after.pid"}``.

    A missing field is left out; the mapping decides whether that matters.
    """

    fields: Mapping[str, tuple[str, ...]]
    name: str = "project"

    @classmethod
    def of(cls, fields: Mapping[str, str]) -> Project:
        return cls({out: parse_path(path) for out, path in fields.items()})

    def __call__(self, event: Event) -> StepOutput:
        doc = {}
        for out, path in self.fields.items():
            value = event.get(path)
            if value is not MISSING:
                doc[out] = value
        return (replace(event, data=doc),)


@dataclass(frozen=True, slots=True)
class SetTime:
    """Normalise the event time from a field (µs, ms, s or ISO-8601).

    With ``fallback`` an event that lacks the field keeps the time it has (from the source or
    the envelope); without it, or with no time at all, it is rejected as ``missing_time``.
    """

    time: TimeSpec
    fallback: bool = True
    name: str = "time"

    def __call__(self, event: Event) -> StepOutput:
        got = event.get(self.time.path)
        if (got is MISSING or got is None) and self.fallback and event.event_time is not None:
            return (event,)
        return (event.with_time(self.time.read(event)),)


# -- side inputs -------------------------------------------------------------------------------


@dataclass
class SideTable:
    """A keyed table kept current from a changelog (e.g. the title catalogue arriving as CDC).

    Last-write-wins on the change's event time: a late, older change does not overwrite a newer
    one; a delete is remembered (as a tombstone) so an older upsert cannot bring the row back.
    Changes without an event time always apply. Tombstones stay in memory: size a side table for
    reference data (catalogues), not for member activity.

    Not thread-safe: one engine task owns it (Flink: keyed or broadcast state).
    """

    name: str
    _rows: dict[str, tuple[int | None, dict[str, Any] | None]] = field(default_factory=dict)

    def upsert(self, key: str, row: Mapping[str, Any], version: int | None = None) -> bool:
        """Set the row of ``key``; returns False if a newer change is already applied."""
        return self._set(key, dict(row), version)

    def delete(self, key: str, version: int | None = None) -> bool:
        """Remove the row of ``key``; returns False if a newer change is already applied."""
        return self._set(key, None, version)

    def truncate(self, version: int | None = None) -> int:
        """Remove every row (a ``TRUNCATE`` of the table it mirrors) that no newer change
        set; returns how many were removed."""
        live = [key for key, (_, row) in self._rows.items() if row is not None]
        return sum(1 for key in live if self._set(key, None, version))

    def _set(self, key: str, row: dict[str, Any] | None, version: int | None) -> bool:
        old = self._rows.get(key)
        if old is not None and version is not None and old[0] is not None and old[0] > version:
            return False
        self._rows[key] = (version, row)
        return True

    def get(self, key: str) -> dict[str, Any] | None:
        """The current row of ``key``, or None."""
        entry = self._rows.get(key)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        return sum(1 for _, row in self._rows.values() if row is not None)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None


@dataclass(frozen=True, slots=True)
class Changelog:
    """Apply each event for which ``when`` holds to ``table`` (upsert, or delete for a CDC
    ``d``, or every row removed for a CDC ``t``: a ``TRUNCATE``), keyed by ``key`` (at most
    :data:`~hopcast.graph.limits.MAX_NODE_ID_BYTES` bytes).

    With ``passthrough`` the event also goes on to the next step (e.g. a catalogue row updates
    the side table and becomes a title node); otherwise it stops here. Events for which ``when``
    does not hold always go on.
    """

    table: SideTable
    key: Template
    when: Condition = field(default_factory=Condition)
    passthrough: bool = True
    name: str = "changelog"

    def __call__(self, event: Event) -> StepOutput:
        if not self.when.holds(event):
            return (event,)
        if event.op == "t":
            self.table.truncate(event.event_time)
            return (event,) if self.passthrough else ()
        key = self.key.render(event)
        if len(key) > MAX_NODE_ID_BYTES or not key.isascii():
            problem = id_problem(key, "side-table key")
            if problem:
                raise RecordRejected(Reason.OUT_OF_BOUNDS, problem)
        if event.op == "d":
            self.table.delete(key, event.event_time)
        else:
            row = event.data.get("row") if event.op is not None else event.data
            if not isinstance(row, Mapping):
                raise RecordRejected(Reason.BAD_ENVELOPE, "a changelog event needs a row")
            self.table.upsert(key, row, event.event_time)
        return (event,) if self.passthrough else ()


@dataclass(frozen=True, slots=True)
class Enrich:
    """Attach ``table``'s row for ``key`` to the event as side input ``into``.

    Paths starting with ``into`` then read the row (``title.name``). A missing row is rejected
    as ``enrichment_missing`` if ``required``, else the event goes on without it.
    """

    table: SideTable
    key: Template
    into: str
    required: bool = False
    name: str = "enrich"

    def __call__(self, event: Event) -> StepOutput:
        key = self.key.render(event)
        row = self.table.get(key)
        if row is None:
            if self.required:
                raise RecordRejected(
                    Reason.ENRICHMENT_MISSING, f"no row {key!r} in side table {self.table.name!r}"
                )
            return (event,)
        return (event.with_side(self.into, row),)


@dataclass(frozen=True, slots=True)
class CheckSize:
    """Reject records larger than ``max_bytes`` before anything decodes them."""

    max_bytes: int = DEFAULT_MAX_BYTES
    name: str = "size"

    def check(self, record: Record) -> None:
        if len(record.value) > self.max_bytes:
            raise RecordRejected(
                Reason.OVERSIZE, f"{len(record.value)} bytes (limit {self.max_bytes})"
            )


# -- the pipeline ------------------------------------------------------------------------------

Decoder = Callable[[Record], Event | None]


class Pipeline:
    """A decoder, steps and schema validation, run record by record (see the module docstring).

    Args:
        decoder: :func:`decode_json`, :func:`decode_debezium` or any ``Record -> Event | None``.
        steps: applied in order to every event.
        schema: if given, every mutation is validated and canonicalised against it, and
            checked against the clock (``now``): a generation time more than ``max_future_us``
            ahead makes the record a ``future_time`` dead letter; a mutation older than its
            type's retention (invisible the moment it is written) is dropped and counted in
            :attr:`expired`, and a record all of whose mutations are is an ``expired`` dead
            letter unless ``expired="drop"``.
        max_bytes: records with larger values become ``oversize`` dead letters.
        mapping: named in dead letters (the mapping file, for a pipeline built from one).
        unmatched: what to do with an event that no step turned into mutations or dropped:
            ``"dead_letter"`` (reason ``unmatched``) or ``"drop"``. A step that returns nothing
            (a filter, a rule with no outputs) is a deliberate drop, never a dead letter.
        max_future_us: how far past ``now`` a generation time may lie (None: no bound).
        expired: ``"dead_letter"`` or ``"drop"`` (see ``schema``).
        fast: a compiled fast path of the same decoder, steps and schema
            (:mod:`hopcast.stream.compiled`): ``Record -> (mutations, oldest ts, newest ts)``
            for an ordinary record, None for any other, which then takes the steps above. It
            must give the same outputs as the steps; it may raise (the steps then run).
    """

    def __init__(
        self,
        decoder: Decoder,
        steps: Sequence[Step] = (),
        schema: Schema | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        mapping: str | None = None,
        unmatched: str = "dead_letter",
        max_future_us: int | None = DEFAULT_MAX_FUTURE_US,
        expired: str = "dead_letter",
        fast: Callable[[Record], tuple[list[Mutation], int, int] | None] | None = None,
    ) -> None:
        if unmatched not in ("dead_letter", "drop"):
            raise ValueError(f"unmatched must be 'dead_letter' or 'drop', got {unmatched!r}")
        if expired not in ("dead_letter", "drop"):
            raise ValueError(f"expired must be 'dead_letter' or 'drop', got {expired!r}")
        if max_future_us is not None and max_future_us < 0:
            raise ValueError(f"max_future_us must be >= 0 or None, got {max_future_us}")
        self.max_future_us = max_future_us
        self.expired_policy = expired
        #: Mutations dropped because they were older than their type's retention on arrival.
        self.expired = 0
        retentions: list[int | None] = []
        if schema is not None:
            retentions += [t.retention_us for t in schema.nodes.values()]
            retentions += [t.retention_us for t in schema.edges.values()]
        #: Every type's retention is at least this (None: every type keeps data forever): a
        #: write younger than it cannot have expired, whatever its type.
        self._min_retention: int | None = min(
            (r for r in retentions if r is not None), default=None
        )
        self.decoder = decoder
        self.steps = tuple(steps)
        self.schema = schema
        self.size = CheckSize(max_bytes)
        self.mapping = mapping
        self.unmatched = unmatched
        self.fast = fast

    def process(self, record: Record, now: int) -> list[Output]:
        """All mutations of ``record`` (canonical, valid), or a single dead letter.

        ``now`` (µs) is only used as the dead letter's time. Never raises.
        """
        fast = self.fast
        if fast is not None:
            try:
                got = fast(record)
            except Exception:  # anything unusual: the steps below report it
                got = None
            if got is not None:
                out, oldest, newest = got
                if not out or self.schema is None:
                    return out  # type: ignore[return-value]
                retention, ahead = self._min_retention, self.max_future_us
                if (retention is None or oldest > now - retention) and (
                    ahead is None or newest <= now + ahead
                ):
                    return out  # type: ignore[return-value]
        return self.process_steps(record, now)

    def process_steps(self, record: Record, now: int) -> list[Output]:
        """:meth:`process` by the decoder, the steps and the schema, never the fast path:
        the reference the fast path is tested against."""
        stage = "size"
        try:
            self.size.check(record)
            stage = "decode"
            event = self.decoder(record)
            if event is None:
                return []
            out: list[Output] = []
            events = [event]
            for step in self.steps:
                stage = step.name
                after: list[Event] = []
                for e in events:
                    for item in step(e):
                        if isinstance(item, Event):
                            after.append(item)
                        else:
                            out.append(item)
                events = after
                if not events:
                    break
            if events and self.unmatched == "dead_letter":
                stage = "end"
                raise RecordRejected(Reason.UNMATCHED, "no step turned the event into mutations")
            stage = "validate"
            oldest, newest = MAX_TS, 0
            for m in out:
                ts = getattr(m, "ts", None)
                if type(ts) is not int or not 0 <= ts <= MAX_TS:
                    raise SchemaViolation(f"ts {ts!r} is not µs since the epoch in [0, 2**62)")
                if ts < oldest:
                    oldest = ts
                if ts > newest:
                    newest = ts
            if self.schema is not None:
                validate = self.schema.validate
                valid = [validate(m) for m in out]  # type: ignore[arg-type]
                stage = "arrival"
                return self._arrival(valid, now, oldest, newest)  # type: ignore[return-value]
            return out
        except RecordRejected as exc:
            return [self._dead(record, now, stage, exc.reason, exc.message)]
        except OutOfBounds as exc:
            return [self._dead(record, now, stage, Reason.OUT_OF_BOUNDS, str(exc))]
        except SchemaViolation as exc:
            return [self._dead(record, now, stage, Reason.SCHEMA_VIOLATION, str(exc))]
        except Exception as exc:  # a bug in a step must not stop the pipeline or lose the record
            message = f"{type(exc).__name__}: {exc}"
            return [self._dead(record, now, stage, Reason.INTERNAL_ERROR, message)]

    def _arrival(self, out: list[Mutation], now: int, oldest: int, newest: int) -> list[Mutation]:
        """``out`` (whose generation times lie in ``[oldest, newest]``) without the mutations
        that expired before they arrived; raises for a generation time too far ahead, or for
        a record whose every mutation expired."""
        floor = None if self._min_retention is None else now - self._min_retention
        ceiling = None if self.max_future_us is None else now + self.max_future_us
        if (floor is None or oldest > floor) and (ceiling is None or newest <= ceiling):
            return out  # the common case: nothing near either bound
        assert self.schema is not None
        kept: list[Mutation] = []
        expired = ""
        for m in out:
            problem = arrival_problem(m.ts, now, self.schema.retention_of(m), self.max_future_us)
            if problem is None:
                kept.append(m)
            elif problem[0] == EXPIRED:
                expired = problem[1]
            else:
                raise RecordRejected(Reason.FUTURE_TIME, problem[1])
        if len(kept) < len(out):
            self.expired += len(out) - len(kept)
            if not kept and self.expired_policy == "dead_letter":
                raise RecordRejected(Reason.EXPIRED, expired)
        return kept

    def process_many(self, records: Iterable[Record], now: int) -> list[Output]:
        """:meth:`process` for each record, outputs concatenated in record order."""
        out: list[Output] = []
        for record in records:
            out.extend(self.process(record, now))
        return out

    def _dead(self, record: Record, now: int, stage: str, reason: str, message: str) -> DeadLetter:
        return DeadLetter(
            reason=reason,
            message=message,
            payload=record.value,
            source=record.source,
            position=record.position,
            time=now,
            stage=stage,
            mapping=self.mapping,
            key=record.key,
            event_time=record.event_time,
        )


def split(outputs: Iterable[Output]) -> tuple[list[Mutation], list[DeadLetter]]:
    """Separate a pipeline's outputs into mutations and dead letters."""
    mutations: list[Mutation] = []
    dead: list[DeadLetter] = []
    for o in outputs:
        if isinstance(o, DeadLetter):
            dead.append(o)
        else:
            mutations.append(o)
    return mutations, dead
