"""The live wire protocol: typed, immutable, tagged messages shared by the gateway and the SDK.

This module is the only thing the gateway (``live/gateway.py``) and the device SDK
(``sdk/protocol.py``) share. Every message is a frozen msgspec struct; :func:`decode` is the one
typed decoder for all of them and :func:`encode` the one encoder. Dispatch on the decoded value
with ``match``.

Protocol (version 1)
====================

Framing
    One JSON object per WebSocket **text** frame, UTF-8, at most :data:`MAX_FRAME_BYTES`. The
    ``type`` field names the message. Field names are exact and lower-case; a receiver ignores
    fields it does not know (so fields can be added without a version bump) and rejects unknown
    ``type`` values, wrong types, out-of-range values and oversize frames with
    :class:`ProtocolError`. (The gateway refuses a frame over the limit inside the WebSocket
    layer, before buffering it: the device sees close code 1009 and no ``error`` message.)
    Integers are JSON integers (never ``1.0``); times (``ts``) are microseconds since the Unix
    epoch, UTC. ``permessage-deflate`` is not used: the messages are
    tiny, and compression costs the server ~3x the memory per connection.

Messages
    ========================= ========= ===========================================================
    ``type``                  direction fields
    ========================= ========= ===========================================================
    ``hello``                 c → s     ``token``, ``client``, ``protocol``, ``last``
    ``subscribe``             c → s     ``channels``
    ``unsubscribe``           c → s     ``channels``
    ``token``                 c → s     ``token`` (a fresh token, answering ``refresh``)
    ``welcome``               s → c     ``node``, ``heartbeat_ms``
    ``trigger``               s → c     ``channel``, ``epoch``, ``seq``, ``event``, ``stage``,
                                        ``version``, ``ts``, ``payload``
    ``state``                 s → c     ``channel``, ``epoch``, ``seq``, ``events`` (list of
                                        ``{event, stage, version, ts, payload}``)
    ``ping`` / ``pong``       both      ``ts`` (the pinger's clock; the pong echoes it)
    ``error``                 s → c     ``code``, ``reason``
    ``bye``                   s → c     ``reason``, ``retry_after_ms``
    ``refresh``               s → c     ``expires_at``, ``within_ms``
    ========================= ========= ===========================================================

Handshake
    1. The device opens the WebSocket and sends ``hello`` with its signed token (see
       ``live/tokens.py``), the protocol version it speaks, its software name and version, and
       ``last``: for every channel it has followed, the ``[epoch, seq]`` of the last message it
       took into account (``{}`` on a first connection).
    2. The gateway verifies the token. On failure it sends ``error`` (``unauthorized`` or
       ``unsupported_protocol``) and closes. On success it sends ``welcome`` with its node id and
       the heartbeat interval. Nothing but ``hello`` is accepted before ``welcome``.
    3. The device sends ``subscribe`` with its channels. For each channel the token's scopes do
       not allow, the gateway sends ``error`` ``forbidden`` and keeps the connection. For each
       allowed channel it catches the device up (below), then streams that channel's triggers.

Sequencing and resume
    Each channel has an **epoch** and a **sequence**: every trigger published on a channel gets
    the next ``seq`` (from 1) within the current epoch. The epoch changes when the channel's
    history is reset (a gateway restart without shared history, a history store wiped): sequence
    numbers of different epochs are unrelated. On ``subscribe`` the gateway looks at the
    device's ``last`` position for that channel:

    * same epoch, and the history still holds every trigger after ``seq`` → it sends those
      triggers, in order, then the live ones;
    * no position, a different epoch, or a gap the history no longer covers → it sends one
      ``state``: the current stage of every event on the channel and the ``[epoch, seq]`` the
      snapshot stands at. The device adopts that position; the next trigger is ``seq + 1``.

    Within a connection triggers of a channel arrive in ``seq`` order without gaps; a gateway
    that notices a gap in its own upstream feed resyncs itself before forwarding. A device that
    sees a gap anyway, or a trigger of another epoch, keeps its position and waits: after an
    epoch change the gateway sends a ``state`` for the new epoch; after a gap the device
    reconnects and resumes from its last contiguous position.

Delivery and idempotence
    Delivery is **at least once**: a device may receive a trigger twice (replay after a resume,
    a ``state`` covering a trigger it already had). Applying is idempotent: every event's
    transitions carry a version that only grows (from the schedule), and a device applies a
    ``(event, version)`` only if the version is newer than the one it applied for that event;
    equal versions are duplicates and older ones are stale, both ignored. ``payload`` names the
    prefetched, stage-keyed payload to show (the same reference for every device; the device's
    segment picks the content when it fetches), or ``null`` when the stage has none. A device
    whose cache lacks it fetches it after a jittered delay.

Heartbeats
    The gateway sends ``ping`` every ``heartbeat_ms``; the device answers ``pong`` with the same
    ``ts``. A device that hears nothing (no ping, no trigger) for 2.5 intervals treats the
    connection as dead and reconnects. A device may ping too; the gateway answers ``pong``.
    These application pings exist because browsers cannot send WebSocket-level pings.

Token lifetime (refresh on the same connection)
    A token is good until its ``exp`` plus the gateway's leeway (default 30 s, the clock
    difference tolerated between issuer and gateway), for the connection's whole life, not
    only at ``hello``. Before that — at ``exp`` minus half the token's lifetime, at most one
    minute ahead — the gateway sends ``refresh``: ``expires_at`` is the current token's ``exp``
    (µs), ``within_ms`` how long the device has to answer. The device answers on the same
    connection with ``token``: a fresh token for the **same subject**. On success the gateway
    keeps every subscription and position (nothing is replayed or missed: there is no
    reconnect) and schedules the next ``refresh`` from the new ``exp``. Channels the fresh
    token's scopes no longer allow are dropped, each with an ``error`` ``forbidden`` (the
    connection stays). A fresh token that does not verify, or names another subject, gets
    ``error`` ``unauthorized`` and the connection is closed (policy violation, 1008). If no valid
    token has arrived by ``exp`` + leeway the gateway sends ``bye`` ``token_expired`` and closes
    with code 4001. A device may also send ``token`` unprompted, e.g. when its login renews.

Revocation, connection cap, binary frames
    A token revoked by id (its ``jti``) or every token of a subject issued before the
    revocation is refused at ``hello`` (``error`` ``unauthorized``, reason ``revoked``); open
    connections presenting one get ``bye`` ``revoked`` and close code 4003 within the gateway's
    revocation poll interval (1 s). A subject holds at most the gateway's per-subject cap of
    connections at once (default 8); a ``hello`` beyond it gets ``bye``
    ``too_many_connections`` (with ``retry_after_ms``) and close code 1013; the connections
    already open are kept. A binary frame gets ``error`` ``malformed`` and close code 1003.
    A device sends frames (messages and WebSocket pings alike) within a budget of 10 a second
    with bursts of 50 (a token bucket per connection, from the opening handshake; a
    well-behaved device sends a handful per connection); beyond it, ``bye``
    ``too_many_messages`` and close code 1008 (a device still flooding is cut off).

Errors and shutdown
    ``error`` codes are :class:`ErrorCode`; after ``malformed``, ``unauthorized``,
    ``unsupported_protocol`` and ``unexpected`` the gateway closes the connection. ``bye`` says
    the gateway is closing the connection on purpose (:class:`ByeReason`); the device waits at
    least ``retry_after_ms`` plus its own jittered backoff before reconnecting, so a fleet told
    to leave at once does not return at once. Receivers treat unknown codes and reasons like
    the closest known one (any ``error`` may be fatal; any ``bye`` means reconnect later).
"""

from __future__ import annotations

import enum
from typing import Annotated, NamedTuple

import msgspec
from msgspec import Meta

from hopcast.errors import ProtocolError as ProtocolError  # re-exported: part of this API

#: The wire protocol version a device announces in ``hello``; bumped only for incompatible
#: changes (new fields are compatible because receivers ignore unknown fields).
PROTOCOL_VERSION = 1

#: Largest frame either side accepts, in bytes. The biggest legitimate message is a ``state`` of
#: :data:`MAX_STATE_EVENTS` events with names at their longest (about 30 KB); a ``hello`` at its
#: largest is about 15 KB. Far below websockets' 1 MiB default, so a hostile client cannot make
#: the gateway buffer much per connection; the gateway passes it to websockets as ``max_size``.
MAX_FRAME_BYTES = 64 * 1024
#: Longest channel, event, stage, node or payload name; generous for ``event:<uuid>``-style names
#: while keeping every message far below :data:`MAX_FRAME_BYTES`.
MAX_NAME_CHARS = 128
#: Most channels in one ``hello`` / ``subscribe`` (and scopes in a token): a device follows a
#: handful (global, region, an event or two); 64 leaves room without letting one connection
#: claim a large share of the fan-out work.
MAX_CHANNELS = 64
#: Most events in one ``state`` snapshot: live events on one channel at the same time are few.
MAX_STATE_EVENTS = 64
#: Longest token in ``hello``: a token with a few scopes is ~300 characters; 4 KiB also fits in
#: a URL or an HTTP header should a transport carry it there.
MAX_TOKEN_CHARS = 4096
#: Longest free-text field (``error.reason``, ``bye.reason``, ``hello.client``).
MAX_TEXT_CHARS = 512

Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
Count = Annotated[int, Meta(ge=0)]
Channels = Annotated[tuple[Name, ...], Meta(max_length=MAX_CHANNELS)]


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` message (the field itself is a plain string on the wire)."""

    #: A frame that did not decode (:class:`ProtocolError`). Fatal.
    MALFORMED = "malformed"
    #: The token is missing, forged, expired or not yet valid. Fatal; get a fresh token.
    UNAUTHORIZED = "unauthorized"
    #: ``hello.protocol`` is a version this gateway does not speak. Fatal.
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    #: A valid message at the wrong moment (``subscribe`` before ``hello``, a server message
    #: sent by a client). Fatal.
    UNEXPECTED = "unexpected"
    #: A channel outside the token's scopes; the connection stays open.
    FORBIDDEN = "forbidden"


class ByeReason(enum.StrEnum):
    """The ``reason`` of a ``bye`` message (a plain string on the wire)."""

    #: The gateway is restarting or shutting down.
    RESTART = "restart"
    #: The node is at its connection limit; try again later (maybe another node).
    OVERLOADED = "overloaded"
    #: The device read too slowly and its send buffer overflowed.
    SLOW = "slow"
    #: The device did not answer pings.
    TIMEOUT = "timeout"
    #: The token expired and no fresh one arrived within the leeway (close code 4001). Get a
    #: fresh token before reconnecting.
    TOKEN_EXPIRED = "token_expired"
    #: The token (by id) or its subject was revoked (close code 4003). A fresh token issued
    #: after the revocation may be accepted, unless its id is revoked too.
    REVOKED = "revoked"
    #: The token's subject already holds the gateway's per-subject limit of connections (close
    #: code 1013); the existing ones are kept.
    TOO_MANY_CONNECTIONS = "too_many_connections"
    #: The device sent messages faster than the gateway's per-connection budget (close code
    #: 1008); a device sends a handful per connection, so this is a bug or an attack.
    TOO_MANY_MESSAGES = "too_many_messages"


class CloseCodes:
    """Application close codes (the 4000-4999 range RFC 6455 leaves to applications)."""

    #: ``bye token_expired``: no fresh token within the leeway.
    TOKEN_EXPIRED = 4001
    #: ``bye revoked``.
    REVOKED = 4003


class Position(NamedTuple):
    """Where a device stands on a channel: the epoch and the last sequence number taken in.

    On the wire: a two-element array ``[epoch, seq]``.
    """

    epoch: Count
    seq: Count


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every message. ``gc=False``: messages hold no reference cycles, so the garbage
    collector need not track them (fewer tracked objects, shorter collection pauses)."""


class EventStage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One event's current stage, as carried in a ``state`` snapshot.

    Attributes:
        event: the live event's id.
        stage: the stage it is in (e.g. ``live``).
        version: the schedule's version of this transition; grows with every transition.
        ts: when the stage took effect, µs since the epoch.
        payload: the stage's prefetched payload reference, or ``None`` if it has none.
    """

    event: Name
    stage: Name
    version: Count
    ts: int
    payload: Name | None = None


def payload_ref(event: str, stage: str) -> str:
    """The payload reference a trigger names for ``stage`` of ``event``: ``<event>/<stage>``.

    The same for every device; the device's segment picks the content when it fetches (the
    prefetch manifest lists it per stage).
    """
    return f"{event}/{stage}"


# -- client → server -----------------------------------------------------------------------------


class Hello(_Message, tag="hello", frozen=True, kw_only=True):
    """First message of a connection: authenticate and say where to resume from.

    Attributes:
        token: the signed device token (``live/tokens.py``).
        client: the device software's name and version, e.g. ``hopcast-py/0.1.0``.
        protocol: the wire protocol version the device speaks (:data:`PROTOCOL_VERSION`).
        last: channel → last :class:`Position` taken in; empty on a first connection.
    """

    token: Annotated[str, Meta(max_length=MAX_TOKEN_CHARS)]
    client: Text
    protocol: Count = PROTOCOL_VERSION
    last: Annotated[dict[Name, Position], Meta(max_length=MAX_CHANNELS)] = {}


class Subscribe(_Message, tag="subscribe", frozen=True, kw_only=True):
    """Follow ``channels`` (after ``welcome``); each is caught up from ``hello.last``."""

    channels: Channels


class Unsubscribe(_Message, tag="unsubscribe", frozen=True, kw_only=True):
    """Stop following ``channels``; triggers already in flight may still arrive."""

    channels: Channels


class FreshToken(_Message, tag="token", frozen=True, kw_only=True):
    """A fresh token for the same subject, on an open connection (answering :class:`Refresh`,
    or unprompted); the connection keeps its subscriptions."""

    token: Annotated[str, Meta(max_length=MAX_TOKEN_CHARS)]


# -- both directions -------------------------------------------------------------------------


class Ping(_Message, tag="ping", frozen=True, kw_only=True):
    """Liveness probe; ``ts`` is the sender's clock (µs), echoed by the answering :class:`Pong`."""

    ts: int


class Pong(_Message, tag="pong", frozen=True, kw_only=True):
    """Answer to a :class:`Ping`, echoing its ``ts``."""

    ts: int


# -- server → client -----------------------------------------------------------------------------


class Welcome(_Message, tag="welcome", frozen=True, kw_only=True):
    """The token is valid: the device may subscribe.

    Attributes:
        node: the gateway node's id (for logs and debugging).
        heartbeat_ms: the gateway pings at this interval; silence for 2.5 of them means dead.
    """

    node: Name
    heartbeat_ms: Annotated[int, Meta(gt=0)]


class Trigger(_Message, tag="trigger", frozen=True, kw_only=True):
    """An event moved to a new stage: the tiny broadcast, encoded once for every device.

    Attributes:
        channel: the channel it was published on.
        epoch: the channel's history epoch.
        seq: its sequence number in the channel, from 1 within an epoch.
        event, stage, version, ts, payload: as in :class:`EventStage`.
    """

    channel: Name
    epoch: Count
    seq: Count
    event: Name
    stage: Name
    version: Count
    ts: int
    payload: Name | None = None


class State(_Message, tag="state", frozen=True, kw_only=True):
    """A channel's current snapshot, sent when triggers cannot catch the device up.

    Attributes:
        channel: the channel.
        epoch, seq: the position the snapshot stands at; the next trigger is ``seq + 1``.
        events: the current stage of every event on the channel.
    """

    channel: Name
    epoch: Count
    seq: Count
    events: Annotated[tuple[EventStage, ...], Meta(max_length=MAX_STATE_EVENTS)] = ()


class Error(_Message, tag="error", frozen=True, kw_only=True):
    """Something the device sent was refused; ``code`` is an :class:`ErrorCode` value."""

    code: Name
    reason: Text


class Bye(_Message, tag="bye", frozen=True, kw_only=True):
    """The gateway closes the connection on purpose; reconnect after ``retry_after_ms`` at least.

    ``reason`` is a :class:`ByeReason` value.
    """

    reason: Text
    retry_after_ms: Count = 0


class Refresh(_Message, tag="refresh", frozen=True, kw_only=True):
    """The token is about to expire: send a fresh one (:class:`FreshToken`) on this connection.

    Attributes:
        expires_at: the current token's ``exp``, µs since the epoch (the gateway's view).
        within_ms: how long the gateway waits, from this message, before ``bye token_expired``.
    """

    expires_at: int
    within_ms: Count


ClientMessage = Hello | Subscribe | Unsubscribe | FreshToken | Ping | Pong
ServerMessage = Welcome | Trigger | State | Ping | Pong | Error | Bye | Refresh
Message = (
    Hello
    | Subscribe
    | Unsubscribe
    | FreshToken
    | Ping
    | Pong
    | Welcome
    | Trigger
    | State
    | Error
    | Bye
    | Refresh
)

_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)
# Dict keys (``hello.last``) sorted, so a message always encodes to the same bytes.
_encoder = msgspec.json.Encoder(order="deterministic")
# A str frame of at most this many characters is within MAX_FRAME_BYTES whatever it holds
# (UTF-8 spends at most 4 bytes per character), so only longer ones are measured in bytes.
_SAFE_STR_CHARS = MAX_FRAME_BYTES // 4


def decode(data: bytes | str) -> Message:
    """Decode one frame into a message.

    Args:
        data: the frame's content (bytes are cheaper: a str is re-encoded to read it).

    Returns:
        The message, fully type-checked (ranges and lengths included).

    Raises:
        ProtocolError: the frame exceeds :data:`MAX_FRAME_BYTES`, is not JSON, or is not a valid
            message; ``reason`` says which and where.
    """
    size = len(data)
    if isinstance(data, str) and size > _SAFE_STR_CHARS:
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame too large: {size} bytes (limit {MAX_FRAME_BYTES})")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from None


def decode_from_client(data: bytes | str) -> ClientMessage:
    """Decode a frame received by the gateway; a server-only message is a protocol error.

    Raises:
        ProtocolError: as :func:`decode`, or the message is one only a server sends.
    """
    msg = decode(data)
    if not isinstance(msg, Hello | Subscribe | Unsubscribe | FreshToken | Ping | Pong):
        raise ProtocolError(f"a client may not send {_tag(msg)!r}")
    return msg


def decode_from_server(data: bytes | str) -> ServerMessage:
    """Decode a frame received by a device; a client-only message is a protocol error.

    Raises:
        ProtocolError: as :func:`decode`, or the message is one only a client sends.
    """
    msg = decode(data)
    if isinstance(msg, Hello | Subscribe | Unsubscribe | FreshToken):
        raise ProtocolError(f"a server may not send {_tag(msg)!r}")
    return msg


def encode(msg: Message) -> bytes:
    """Encode a message into the UTF-8 JSON of one text frame.

    Values are not checked here (construction does not validate); :func:`decode` on the other
    side does. Send the result as a text frame (with websockets: ``send(data, text=True)``, or
    ``data.decode()`` for ``broadcast()``); encode a broadcast once and send the same bytes to
    every connection.
    """
    return _encoder.encode(msg)


def _tag(msg: Message) -> str:
    return str(msg.__struct_config__.tag)
