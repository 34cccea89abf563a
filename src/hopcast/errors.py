"""Every exception hopcast raises on purpose.

::

    HopcastError
    ├── ConfigError                 a setting is missing or invalid
    ├── SchemaError                 a schema file is malformed (names file, path and problem)
    │   └── MappingError            a stream mapping file is malformed (file, path and line)
    ├── InvalidInput                the caller sent something we cannot accept  (HTTP 4xx)
    │   ├── InvalidNodeId           not 'type:key'
    │   ├── InvalidMutation         a mutation's JSON form is malformed
    │   ├── SchemaViolation         a write that does not fit the schema
    │   │   └── OutOfBounds         a write beyond a documented bound (hopcast.graph.limits)
    │   ├── InvalidQuery            a query spec is malformed or exceeds a bound
    │   ├── InvalidCursor           a paging cursor that was not issued by us
    │   ├── IllegalTransition       a live-event command the event's state does not accept
    │   ├── ProtocolError           a live wire frame that is not a valid message
    │   ├── TokenError              a device token that is malformed, forged or expired
    │   └── RecordRejected          an ingested record that cannot become mutations (reason code)
    ├── NotFound                    a named thing does not exist                (HTTP 404)
    ├── StorageError                the KV backend failed (translated from the driver's error)
    │   ├── StorageRefused          the backend cannot store this data (retrying cannot help)
    │   └── StoreClosed             the store was used after close()
    └── SourceError                 a source's upstream (database, broker) failed or refused

Drivers' exceptions (lmdb, redis, psycopg, confluent-kafka, …) never leave the module that
imports the driver: they are translated into :class:`StorageError` (or :class:`SourceError`)
there, with the original chained as ``__cause__``.
"""

from __future__ import annotations


class HopcastError(Exception):
    """Base of every error hopcast raises on purpose."""


class ConfigError(HopcastError):
    """A setting is missing or invalid."""


class SchemaError(HopcastError):
    """A schema document is malformed.

    The message names the file, the path inside it (``edges.plays.props.minutes``) and what is
    wrong.
    """

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class MappingError(SchemaError):
    """A stream mapping file is malformed (see :mod:`hopcast.stream.mapping`).

    Like :class:`SchemaError`, the message names the file, the path inside it with its line
    (``rules[0].emit[1].to (line 14)``) and what is wrong.
    """


class InvalidInput(HopcastError):
    """The caller sent something we cannot accept. Maps to HTTP 400/422."""


class InvalidNodeId(InvalidInput):
    """A node id is not of the form ``type:key``."""


class InvalidMutation(InvalidInput):
    """A mutation's serialised form is malformed."""


class SchemaViolation(InvalidInput):
    """A write does not fit the schema; ``reason`` says why."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        prefix = f"mutation #{index}: " if index is not None else ""
        super().__init__(prefix + reason)


class OutOfBounds(SchemaViolation):
    """A write breaks a bound of :mod:`hopcast.graph.limits` (id length, integer range, nesting
    depth, size, ...): no backend is asked to store it. Ingest dead-letters its record with
    reason ``out_of_bounds``; the HTTP API answers 422."""


class InvalidQuery(InvalidInput):
    """A query is malformed or asks for more than the configured bounds."""


class InvalidCursor(InvalidInput):
    """A paging cursor is corrupt or was issued for a different query."""


class IllegalTransition(InvalidInput):
    """A live-event input that the event's current state does not accept (HTTP 409 fits).

    ``event_id``, ``state`` and ``kind`` name the event, its state and the refused input;
    :mod:`hopcast.live.schedule` builds the message, listing what is accepted.
    """

    def __init__(self, event_id: str, state: str | None, kind: str, message: str) -> None:
        self.event_id = event_id
        self.state = state
        self.kind = kind
        super().__init__(message)


class ProtocolError(InvalidInput):
    """A live wire frame is not a valid message: too large, not JSON, unknown ``type``, wrong
    field types. ``reason`` says which (see :mod:`hopcast.live.messages`)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class TokenError(InvalidInput):
    """A device token was refused; ``problem`` says why: ``malformed``, ``unknown_key``,
    ``bad_signature``, ``expired`` or ``not_yet_valid`` (see :mod:`hopcast.live.tokens`)."""

    def __init__(self, problem: str, detail: str) -> None:
        self.problem = problem
        super().__init__(f"token refused ({problem}): {detail}")


class NotFound(HopcastError):
    """A node, event or other named thing does not exist. Maps to HTTP 404."""


class StorageError(HopcastError):
    """The key-value backend failed."""


class StorageRefused(StorageError):
    """The backend refused this data (a key or value it cannot store): retrying the same write
    cannot help, and other writes are unaffected. Ingest isolates the record that caused it
    into a dead letter (reason ``write_failed``); the HTTP API answers 422.

    The bounds of :mod:`hopcast.graph.limits` are checked before any write so that this is not
    reached; it is the safety net for what slips through.
    """


class StoreClosed(StorageError):
    """The store was used after ``close()``."""


class RecordRejected(InvalidInput):
    """An ingested record cannot become mutations; ``reason`` is a dead-letter reason code.

    Pipeline steps (:mod:`hopcast.stream.operators`) and mapping hooks raise it; the pipeline
    turns it into a dead letter and never lets it escape (see :mod:`hopcast.stream.deadletter`
    for the reason codes).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class SourceError(HopcastError):
    """A stream source's upstream failed or refused: a database or broker that cannot be reached,
    a replication stream that broke, a topic that does not exist. Translated from the driver's
    error (chained as ``__cause__``) in the source's module."""
