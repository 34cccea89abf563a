"""The wire protocol: golden vectors pin every message's exact JSON; bad frames are refused."""

from __future__ import annotations

import gc

import pytest

from hopcast.errors import InvalidInput
from hopcast.live import messages as m
from hopcast.live.messages import Position, ProtocolError

# Golden vectors: the exact bytes of each message on the wire. Another platform's implementation
# must produce and accept these; a change here is a protocol change.
GOLDEN: list[tuple[m.Message, bytes]] = [
    (
        m.Hello(token="hc1.k0.abc.def", client="hopcast-py/0.1.0"),
        b'{"type":"hello","token":"hc1.k0.abc.def","client":"hopcast-py/0.1.0","protocol":1,'
        b'"last":{}}',
    ),
    (
        m.Hello(
            token="t",
            client="tv/2.3",
            last={"region:eu": Position(7, 41), "global": Position(7, 12)},
        ),
        b'{"type":"hello","token":"t","client":"tv/2.3","protocol":1,'
        b'"last":{"global":[7,12],"region:eu":[7,41]}}',
    ),
    (
        m.Subscribe(channels=("global", "event:finale")),
        b'{"type":"subscribe","channels":["global","event:finale"]}',
    ),
    (m.Unsubscribe(channels=("global",)), b'{"type":"unsubscribe","channels":["global"]}'),
    (m.FreshToken(token="hc1.k0.e30.x"), b'{"type":"token","token":"hc1.k0.e30.x"}'),
    (
        m.Refresh(expires_at=1764150000000000, within_ms=31000),
        b'{"type":"refresh","expires_at":1764150000000000,"within_ms":31000}',
    ),
    (m.Ping(ts=1767225600000000), b'{"type":"ping","ts":1767225600000000}'),
    (m.Pong(ts=1767225600000000), b'{"type":"pong","ts":1767225600000000}'),
    (
        m.Welcome(node="gw-1", heartbeat_ms=30000),
        b'{"type":"welcome","node":"gw-1","heartbeat_ms":30000}',
    ),
    (
        m.Trigger(
            channel="global",
            epoch=7,
            seq=13,
            event="finale",
            stage="live",
            version=4,
            ts=1767225600000000,
            payload="finale/live",
        ),
        b'{"type":"trigger","channel":"global","epoch":7,"seq":13,"event":"finale",'
        b'"stage":"live","version":4,"ts":1767225600000000,"payload":"finale/live"}',
    ),
    (
        m.Trigger(
            channel="global", epoch=7, seq=14, event="finale", stage="ended", version=5, ts=9
        ),
        b'{"type":"trigger","channel":"global","epoch":7,"seq":14,"event":"finale",'
        b'"stage":"ended","version":5,"ts":9,"payload":null}',
    ),
    (
        m.State(
            channel="global",
            epoch=8,
            seq=0,
            events=(
                m.EventStage(event="finale", stage="live", version=4, ts=5, payload="finale/live"),
                m.EventStage(event="quiz", stage="scheduled", version=1, ts=3),
            ),
        ),
        b'{"type":"state","channel":"global","epoch":8,"seq":0,"events":['
        b'{"event":"finale","stage":"live","version":4,"ts":5,"payload":"finale/live"},'
        b'{"event":"quiz","stage":"scheduled","version":1,"ts":3,"payload":null}]}',
    ),
    (
        m.Error(code=m.ErrorCode.FORBIDDEN, reason="channel 'vip' is not in the token's scopes"),
        b'{"type":"error","code":"forbidden","reason":"channel \'vip\' is not in the token\'s '
        b'scopes"}',
    ),
    (
        m.Bye(reason=m.ByeReason.RESTART, retry_after_ms=2000),
        b'{"type":"bye","reason":"restart","retry_after_ms":2000}',
    ),
]


@pytest.mark.parametrize(("msg", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_each_message_encodes_to_its_golden_bytes(msg: m.Message, wire: bytes) -> None:
    assert m.encode(msg) == wire


@pytest.mark.parametrize(("msg", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_each_golden_frame_decodes_to_its_message(msg: m.Message, wire: bytes) -> None:
    assert m.decode(wire) == msg
    assert m.decode(wire.decode()) == msg


def test_the_golden_vectors_cover_every_message_type() -> None:
    assert {type(msg) for msg, _ in GOLDEN} == set(m.Message.__args__)


def test_hello_positions_encode_in_key_order_whatever_the_insertion_order() -> None:
    a = m.Hello(token="t", client="c", last={"b": Position(1, 2), "a": Position(1, 1)})
    b = m.Hello(token="t", client="c", last={"a": Position(1, 1), "b": Position(1, 2)})
    assert m.encode(a) == m.encode(b)


def test_unknown_fields_are_ignored_so_fields_can_be_added_later() -> None:
    assert m.decode(b'{"type":"pong","ts":5,"added_in_v2":[1,2]}') == m.Pong(ts=5)


def test_optional_fields_take_their_defaults_when_absent() -> None:
    assert m.decode(b'{"type":"hello","token":"t","client":"c"}') == m.Hello(token="t", client="c")
    assert m.decode(b'{"type":"bye","reason":"slow"}') == m.Bye(reason="slow", retry_after_ms=0)


def test_messages_are_immutable_and_untracked_by_the_garbage_collector() -> None:
    msg = m.Ping(ts=1)
    with pytest.raises(AttributeError):
        msg.ts = 2  # type: ignore[misc]
    assert not gc.is_tracked(msg)


# -- refused frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (b"{not json", "not a JSON message"),
        (b'{"type":"ping","ts":1} trailing', "not a JSON message"),
        (b"\xff\xfe", "not a JSON message"),
        (b"[]", "Expected `object`, got `array`"),
        (b'{"ts":1}', "missing required field `type`"),
        (b'{"type":"shout","ts":1}', "`$.type`"),
        (b'{"type":"ping"}', "missing required field `ts`"),
        (b'{"type":"ping","ts":"1"}', "Expected `int`, got `str` - at `$.ts`"),
        (b'{"type":"ping","ts":1.0}', "Expected `int`, got `float` - at `$.ts`"),
        (b'{"type":"ping","ts":true}', "Expected `int`, got `bool` - at `$.ts`"),
        (b'{"type":"welcome","node":"n","heartbeat_ms":0}', "`$.heartbeat_ms`"),
        (b'{"type":"subscribe","channels":[""]}', "`$.channels[0]`"),
        (b'{"type":"subscribe","channels":"global"}', "`$.channels`"),
        (b'{"type":"hello","token":"t","client":"c","last":{"g":[1]}}', "`$.last[...]`"),
        (b'{"type":"hello","token":"t","client":"c","last":{"g":[1,-1]}}', "`$.last[...][1]`"),
        (
            b'{"type":"trigger","channel":"g","epoch":-1,"seq":1,"event":"e","stage":"s",'
            b'"version":1,"ts":1}',
            "`$.epoch`",
        ),
    ],
)
def test_a_malformed_frame_raises_protocol_error_naming_the_problem(
    frame: bytes, says: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        m.decode(frame)
    assert says in info.value.reason
    assert isinstance(info.value, InvalidInput)


def test_names_longer_than_the_limit_are_refused() -> None:
    name = "x" * (m.MAX_NAME_CHARS + 1)
    with pytest.raises(ProtocolError, match="length <= 128"):
        m.decode(b'{"type":"subscribe","channels":["%s"]}' % name.encode())


def test_more_channels_than_the_limit_are_refused() -> None:
    channels = ",".join(f'"c{i}"' for i in range(m.MAX_CHANNELS + 1))
    with pytest.raises(ProtocolError, match=r"`\$\.channels`"):
        m.decode(b'{"type":"subscribe","channels":[%s]}' % channels.encode())


def test_a_frame_over_the_size_limit_is_refused_before_parsing() -> None:
    frame = b'{"type":"ping","ts":1,"pad":"' + b"x" * m.MAX_FRAME_BYTES + b'"}'
    with pytest.raises(ProtocolError, match="frame too large"):
        m.decode(frame)


def test_a_text_frame_is_measured_in_utf8_bytes_not_characters() -> None:
    pad = "é" * (m.MAX_FRAME_BYTES // 2)  # fewer characters than the limit, twice the bytes
    frame = '{"type":"ping","ts":1,"pad":"' + pad + '"}'
    assert len(frame) < m.MAX_FRAME_BYTES
    with pytest.raises(ProtocolError, match="frame too large"):
        m.decode(frame)


def test_a_frame_just_under_the_size_limit_is_accepted() -> None:
    head, tail = b'{"type":"ping","ts":1,"pad":"', b'"}'
    frame = head + b"x" * (m.MAX_FRAME_BYTES - len(head) - len(tail)) + tail
    assert len(frame) == m.MAX_FRAME_BYTES
    assert m.decode(frame) == m.Ping(ts=1)


def test_the_largest_legitimate_messages_fit_in_a_frame() -> None:
    name = "n" * m.MAX_NAME_CHARS
    stage = m.EventStage(event=name, stage=name, version=2**40, ts=2**52, payload=name)
    state = m.State(channel=name, epoch=2**40, seq=2**40, events=(stage,) * m.MAX_STATE_EVENTS)
    hello = m.Hello(
        token="t" * m.MAX_TOKEN_CHARS,
        client="c" * m.MAX_TEXT_CHARS,
        last={f"{i:03}" + name[3:]: Position(2**40, 2**40) for i in range(m.MAX_CHANNELS)},
    )
    for msg in (state, hello):
        wire = m.encode(msg)
        assert len(wire) <= m.MAX_FRAME_BYTES
        assert m.decode(wire) == msg


# -- direction ---------------------------------------------------------------------------------


def test_the_gateway_side_decoder_refuses_messages_only_a_server_sends() -> None:
    assert m.decode_from_client(b'{"type":"ping","ts":1}') == m.Ping(ts=1)
    with pytest.raises(ProtocolError, match="a client may not send 'welcome'"):
        m.decode_from_client(b'{"type":"welcome","node":"n","heartbeat_ms":1}')


def test_the_device_side_decoder_refuses_messages_only_a_client_sends() -> None:
    assert m.decode_from_server(b'{"type":"pong","ts":1}') == m.Pong(ts=1)
    with pytest.raises(ProtocolError, match="a server may not send 'subscribe'"):
        m.decode_from_server(b'{"type":"subscribe","channels":["g"]}')
