"""Token lifetimes on open connections, revocation, the per-subject cap and binary frames, over
real sockets: the gateway asks for a fresh token before ``exp`` and closes (``bye
token_expired``, 4001) a connection that sends none within the leeway; the SDK client refreshes
in place and misses no trigger, and a forced reconnect still gets everything; a revoked token or
subject is closed (``bye revoked``, 4003) and refused at ``hello``; a subject over its cap is
refused with the open connections kept; a binary frame closes with 1003.

Short real lifetimes (2 s tokens, 0.5 s leeway): what is under test is the passing of ``exp``
itself. Every wait is bounded by ``WAIT_S`` and names what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hopcast.durations import HOUR, SECOND, now_us
from hopcast.errors import ConfigError
from hopcast.live import gateway as gw
from hopcast.live import messages as m
from hopcast.live import tokens
from hopcast.live.revocation import FileRevocations, revocation
from hopcast.live.tokens import Claims
from hopcast.sdk.client import DeviceClient
from hopcast.sdk.protocol import RefreshRequested
from live.test_gateway import (
    SECRET,
    WAIT_S,
    Device,
    Env,
    hello,
    raw_session,
    run,
    running,
    trigger,
)

#: Lifetime of the short tokens: long enough for a connection to settle, short enough to expire
#: within the test.
SHORT_S = 2.0
#: The gateway's leeway after ``exp`` in these tests.
LEEWAY_S = 0.5
#: Revocation poll interval in these tests.
POLL_S = 0.1


def short_token(device: str = "tv", scopes: tuple[str, ...] = ("global",), **kw: Any) -> str:
    return tokens.issue(SECRET, device, scopes, now_us(), round(SHORT_S * SECOND), **kw)


def claims(token: str) -> Claims:
    return tokens.verify(SECRET, token, now_us())


async def until(predicate: Any, what: str) -> None:
    """Wait (polling every 10 ms) until ``predicate()``; fail naming ``what`` after WAIT_S."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"gave up after {WAIT_S} s waiting for {what}") from None


async def past(deadline_us: int) -> None:
    """Wait until the wall clock passes ``deadline_us`` (the expiry under test)."""
    await asyncio.sleep(max(0.0, (deadline_us - now_us()) / SECOND) + 0.05)


async def device(env: Env, tok: str, channels: tuple[str, ...] = ("global",)) -> Device:
    d = Device(env.url, channels=channels)
    d.proto.token = tok
    await d.start()
    return d


def byes(d: Device) -> list[m.Bye]:
    return [f for f in d.frames if isinstance(f, m.Bye)]


# -- refresh and expiry ----------------------------------------------------------------------


def test_a_connection_that_refreshes_keeps_receiving_after_its_first_token_expired() -> None:
    async def main() -> None:
        async with running(token_leeway_s=LEEWAY_S) as env:
            first = short_token()
            d = await device(env, first)
            await d.until(lambda: any(isinstance(e, RefreshRequested) for e in d.events))
            (ask,) = [f for f in d.frames if isinstance(f, m.Refresh)]
            assert ask.expires_at == claims(first).expires_at
            assert 0 < ask.within_ms <= (SHORT_S / 2 + LEEWAY_S) * 1000 + 50
            d.proto.renew(tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR))
            assert d.ws is not None
            for out in d.proto.data_to_send():
                await d.ws.send(out, text=True)
            await past(claims(first).expires_at + round(LEEWAY_S * SECOND))
            await d.sync()  # still open after the first token's exp + leeway
            env.router.publish(trigger(1))
            await d.until(lambda: d.applied() == [("live", 1)])
            assert byes(d) == [] and len(d.connections) == 1
            stats = env.gateway.stats()
            assert stats["token_refreshes_ok"] == 1 and stats["token_expiries"] == 0

    run(main)


def test_a_connection_that_does_not_refresh_gets_bye_token_expired_and_close_code_4001() -> None:
    async def main() -> None:
        async with running(token_leeway_s=LEEWAY_S) as env:
            tok = short_token()
            d = await device(env, tok)
            await d.closed()  # nobody answers the refresh request
            closed_at = now_us()
            assert closed_at >= claims(tok).expires_at + round(LEEWAY_S * SECOND)
            kinds = [type(f).__name__ for f in d.frames if not isinstance(f, m.Ping | m.Pong)]
            assert kinds == ["Welcome", "State", "Refresh", "Bye"]
            assert byes(d)[0].reason == m.ByeReason.TOKEN_EXPIRED
            assert d.ws is not None and d.ws.close_code == m.CloseCodes.TOKEN_EXPIRED
            await until(lambda: env.gateway.connection_count == 0, "the expired connection gone")
            stats = env.gateway.stats()
            assert stats["token_expiries"] == 1 and stats["refresh_requests"] == 1
            assert stats["evictions_token_expired"] == 1

    run(main)


def test_a_fresh_token_for_another_subject_is_refused_and_the_connection_closed() -> None:
    async def main() -> None:
        async with running(token_leeway_s=LEEWAY_S) as env:
            d = await device(env, short_token("tv"))
            assert d.ws is not None
            other = tokens.issue(SECRET, "phone", ("global",), now_us(), HOUR)
            await d.ws.send(m.encode(m.FreshToken(token=other)), text=True)
            await d.closed()
            (error,) = [f for f in d.frames if isinstance(f, m.Error)]
            assert error.code == m.ErrorCode.UNAUTHORIZED and "same subject" in error.reason
            assert d.ws.close_code == 1008
            stats = env.gateway.stats()
            assert stats["token_refreshes_refused"] == 1
            # counted as a token swap, not as a garbled token
            assert (
                stats["auth_failures_wrong_subject"] == 1 and stats["auth_failures_malformed"] == 0
            )

    run(main)


def test_a_forged_fresh_token_is_refused_and_the_connection_closed() -> None:
    async def main() -> None:
        async with running() as env:
            d = await device(env, short_token("tv"))
            assert d.ws is not None
            forged = tokens.issue(bytes(range(1, 33)), "tv", ("global",), now_us(), HOUR)
            await d.ws.send(m.encode(m.FreshToken(token=forged)), text=True)
            await d.closed()
            (error,) = [f for f in d.frames if isinstance(f, m.Error)]
            assert error.code == m.ErrorCode.UNAUTHORIZED
            assert env.gateway.stats()["auth_failures_bad_signature"] == 1

    run(main)


def test_a_fresh_token_with_narrower_scopes_drops_the_channels_it_no_longer_allows() -> None:
    async def main() -> None:
        async with running() as env:
            d = await device(env, short_token("tv", ("global", "event:*")), ("global", "event:a"))
            assert env.gateway.subscriber_count("event:a") == 1
            d.proto.renew(tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR))
            assert d.ws is not None
            for out in d.proto.data_to_send():
                await d.ws.send(out, text=True)
            await d.sync()
            (error,) = [f for f in d.frames if isinstance(f, m.Error)]
            assert error.code == m.ErrorCode.FORBIDDEN and "event:a" in error.reason
            assert env.gateway.subscriber_count("event:a") == 0
            assert env.gateway.subscriber_count("global") == 1
            env.router.publish(trigger(1))
            await d.until(lambda: d.applied() == [("live", 1)])  # the connection stays

    run(main)


# -- the SDK client ----------------------------------------------------------------------------


def test_the_sdk_client_refreshes_in_place_and_misses_no_trigger_published_around_it() -> None:
    async def main() -> None:
        async with running(token_leeway_s=LEEWAY_S) as env:

            async def fresh() -> str:
                return short_token("tv")

            client = DeviceClient(
                env.url, short_token("tv"), ["global"], rng=random.Random(1), refresh_token=fresh
            )
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await until(lambda: client.stats.state_syncs == 1, "the client's first snapshot")
            # Publish a trigger every 50 ms across three token lifetimes (two refreshes).
            version = 0
            end = now_us() + round(3 * SHORT_S * SECOND)
            while now_us() < end:
                version += 1
                env.router.publish(trigger(version))
                await asyncio.sleep(0.05)
            await until(
                lambda: client.stats.triggers_applied == version,
                f"{version} triggers applied (got {client.stats.triggers_applied})",
            )
            stop.set()
            await task
            applied = [s.version for s in client.stats.applied]
            assert applied == list(range(1, version + 1))
            assert client.stats.connects == 1 and client.stats.byes == 0
            assert client.stats.token_renewals >= 2
            assert env.gateway.stats()["token_refreshes_ok"] >= 2

    run(main)


def test_an_sdk_client_closed_for_expiry_reconnects_with_a_fresh_token_and_misses_nothing() -> None:
    async def main() -> None:
        async with running(token_leeway_s=LEEWAY_S) as env:
            calls = 0

            async def fresh() -> str:
                nonlocal calls
                calls += 1
                if calls == 1:  # the in-place refresh fails: the gateway closes at expiry
                    raise OSError("login service unreachable")
                return tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR)

            async def no_wait(_: float) -> None:
                return None

            client = DeviceClient(
                env.url,
                short_token("tv"),
                ["global"],
                rng=random.Random(1),
                refresh_token=fresh,
                sleep=no_wait,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await until(lambda: client.stats.state_syncs == 1, "the client's first snapshot")
            version = 0
            while client.stats.welcomes < 2:  # publish through the close and the reconnect
                version += 1
                env.router.publish(trigger(version))
                await asyncio.sleep(0.05)
                assert version < WAIT_S / 0.05, "the client never reconnected"
            for _ in range(3):
                version += 1
                env.router.publish(trigger(version))
            await until(
                lambda: client.stats.triggers_applied == version,
                f"{version} triggers applied (got {client.stats.triggers_applied})",
            )
            stop.set()
            await task
            assert [s.version for s in client.stats.applied] == list(range(1, version + 1))
            assert client.stats.byes == 1 and client.stats.connects == 2
            assert env.gateway.stats()["token_expiries"] == 1

    run(main)


# -- revocation --------------------------------------------------------------------------------


def test_a_revoked_token_id_closes_its_connection_and_is_refused_at_hello(tmp_path: Path) -> None:
    async def main() -> None:
        source = FileRevocations.in_directory(tmp_path)
        async with running(revocations=source, revocation_poll_s=POLL_S) as env:
            tok = tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR)
            kept = tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR)
            d, other = await device(env, tok), await device(env, kept)
            token_id = claims(tok).token_id
            assert token_id is not None
            revoked_at = now_us()
            await source.add(revocation("token_id", token_id, revoked_at), revoked_at)
            await d.closed()
            assert [b.reason for b in byes(d)] == [m.ByeReason.REVOKED]
            assert d.ws is not None and d.ws.close_code == m.CloseCodes.REVOKED
            assert now_us() - revoked_at < 2 * SECOND  # within the poll interval, plus slack
            frames, code = await raw_session(env.url, hello(tok))
            assert frames == [m.Error(code=m.ErrorCode.UNAUTHORIZED, reason=frames[0].reason)]
            assert "revoked" in frames[0].reason and code == 1008
            await other.sync()  # the subject's other token is untouched
            assert byes(other) == []
            stats = env.gateway.stats()
            assert stats["revocations_open"] == 1 and stats["revocations_hello"] == 1
            assert stats["auth_failures_revoked"] == 1

    run(main)


def test_a_corrupt_revocation_file_is_logged_once_its_list_kept_and_a_repair_takes_effect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        source = FileRevocations.in_directory(tmp_path)
        first = now_us()
        await source.add(revocation("subject", "old", first), first)
        async with running(revocations=source, revocation_poll_s=POLL_S) as env:
            assert len(env.gateway.revocations) == 1
            d = await device(env, tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR))
            source.path.write_text("{garbage")
            await asyncio.sleep(10 * POLL_S)  # ten polls of the corrupt file
            assert len(env.gateway.revocations) == 1  # the last good list stays in force
            warned = [r for r in caplog.records if "keeps its revocation list" in r.message]
            assert len(warned) == 1, [r.message for r in warned]  # once, not once per poll
            assert "move it aside" in warned[0].getMessage()
            source.path.unlink()  # the operator moves it aside, then revokes again
            now = now_us()
            await FileRevocations.in_directory(tmp_path).add(revocation("subject", "tv", now), now)
            await d.closed()
            assert [b.reason for b in byes(d)] == [m.ByeReason.REVOKED]
            assert any("reads its revocation list again" in r.message for r in caplog.records)

    caplog.set_level(logging.WARNING, logger="hopcast.live.gateway")
    run(main)


def test_a_gateway_refuses_to_start_on_a_revocation_list_it_cannot_read(tmp_path: Path) -> None:
    async def main() -> None:
        source = FileRevocations.in_directory(tmp_path)
        source.path.write_text("{garbage")  # starting with no list would let revoked tokens in
        with pytest.raises(ConfigError, match="move it aside"):
            async with running(revocations=source, revocation_poll_s=POLL_S):
                pass

    run(main)


def test_a_revoked_subject_loses_its_earlier_tokens_but_a_later_one_is_accepted(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        source = FileRevocations.in_directory(tmp_path)
        async with running(revocations=source, revocation_poll_s=POLL_S) as env:
            early = tokens.issue(SECRET, "tv", ("global",), now_us() - SECOND, HOUR)
            d = await device(env, early)
            at = now_us()
            source.add_sync(revocation("subject", "tv", at), at)
            await d.closed()
            assert [b.reason for b in byes(d)] == [m.ByeReason.REVOKED]
            frames, _ = await raw_session(env.url, hello(early))
            assert isinstance(frames[0], m.Error) and "revoked" in frames[0].reason
            later = tokens.issue(SECRET, "tv", ("global",), at + 1, HOUR)
            again = await device(env, later)
            assert any(isinstance(f, m.Welcome) for f in again.frames)

    run(main)


def test_apply_revocations_closes_matching_connections_at_once() -> None:
    async def main() -> None:
        async with running() as env:
            d = await device(env, tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR))
            from hopcast.live.revocation import RevocationList

            at = now_us()
            closed = env.gateway.apply_revocations(
                RevocationList([revocation("subject", "tv", at)])
            )
            assert closed == 1
            await d.closed()
            assert [b.reason for b in byes(d)] == [m.ByeReason.REVOKED]

    run(main)


# -- the per-subject cap and binary frames ---------------------------------------------------


def test_a_subject_over_its_cap_is_refused_and_its_open_connections_are_kept() -> None:
    async def main() -> None:
        async with running(max_per_subject=2) as env:
            tok = tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR)
            first, second = await device(env, tok), await device(env, tok)
            frames, code = await raw_session(env.url, hello(tok))
            assert [type(f) for f in frames] == [m.Bye]
            assert frames[0] == m.Bye(
                reason=m.ByeReason.TOO_MANY_CONNECTIONS,
                retry_after_ms=frames[0].retry_after_ms,  # type: ignore[union-attr]
            )
            assert code == 1013
            assert env.gateway.subject_count("tv") == 2
            other = tokens.issue(SECRET, "phone", ("global",), now_us(), HOUR)
            await device(env, other)  # another subject is not affected
            env.router.publish(trigger(1))
            for d in (first, second):
                await d.until(lambda d=d: d.applied() == [("live", 1)])
            await first.stop()
            await until(lambda: env.gateway.subject_count("tv") == 1, "the count to drop")
            third = await device(env, tok)  # a slot is free again
            assert byes(third) == []
            stats = env.gateway.stats()
            assert stats["subject_cap_refusals"] == 1
            assert stats["rejections_too_many_connections"] == 1

    run(main)


async def binary_session(env: Env, *frames: bytes | str) -> tuple[list[m.ServerMessage], int]:
    received: list[m.ServerMessage] = []
    async with connect(env.url, compression=None, ping_interval=None) as ws:
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await ws.send(frame)  # bytes: a binary frame; str: text
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                while True:
                    received.append(m.decode_from_server(await ws.recv(decode=False)))
        assert ws.close_code is not None
        return received, ws.close_code


def test_a_binary_frame_is_refused_with_close_code_1003_before_and_after_hello() -> None:
    async def main() -> None:
        async with running() as env:
            tok = tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR)
            frames, code = await binary_session(env, hello(tok))  # the hello itself as binary
            assert code == 1003
            (error,) = frames
            assert isinstance(error, m.Error) and error.code == m.ErrorCode.MALFORMED
            assert "binary" in error.reason
            frames, code = await binary_session(env, hello(tok).decode(), b'{"type":"ping"}')
            assert isinstance(frames[0], m.Welcome) and code == 1003
            assert isinstance(frames[-1], m.Error) and frames[-1].code == m.ErrorCode.MALFORMED
            assert env.gateway.stats()["binary_refusals"] == 2

    run(main)


def test_every_lifetime_series_is_exported_from_the_start() -> None:
    async def main() -> None:
        async with running() as env:
            text = generate_latest(env.gateway.metrics_registry).decode()
            for series in (
                "hopcast_gateway_refresh_requests_total",
                'hopcast_gateway_token_refreshes_total{outcome="ok"}',
                'hopcast_gateway_token_refreshes_total{outcome="refused"}',
                "hopcast_gateway_token_expiries_total",
                'hopcast_gateway_revocations_total{when="hello"}',
                'hopcast_gateway_revocations_total{when="open"}',
                'hopcast_gateway_auth_failures_total{problem="revoked"}',
                "hopcast_gateway_subject_cap_refusals_total",
                "hopcast_gateway_binary_refusals_total",
                'hopcast_gateway_evictions_total{reason="token_expired"}',
                'hopcast_gateway_evictions_total{reason="revoked"}',
            ):
                assert f"\n{series} 0.0" in text, series

    run(main)


# -- message budget ----------------------------------------------------------------------------


def test_a_device_flooding_token_messages_gets_bye_too_many_messages_and_close_1008() -> None:
    async def main() -> None:
        async with running() as env:
            tok = tokens.issue(SECRET, "tv", ("global",), now_us(), HOUR)
            # Over the budget by half a burst: told and closed (a further burst: aborted).
            flood = [m.encode(m.FreshToken(token=tok))] * (gw.MESSAGE_BURST * 3 // 2)
            frames, code = await raw_session(env.url, hello(tok), *flood)
            assert isinstance(frames[0], m.Welcome)
            assert isinstance(frames[-1], m.Bye), frames[-3:]
            assert frames[-1].reason == m.ByeReason.TOO_MANY_MESSAGES and code == 1008
            stats = env.gateway.stats()
            # the burst was served, the rest refused (a few more may have refilled meanwhile)
            assert gw.MESSAGE_BURST - 1 <= stats["token_refreshes_ok"] < 2 * gw.MESSAGE_BURST
            assert stats["evictions_too_many_messages"] == 1

    run(main)


def test_a_device_within_the_message_budget_keeps_its_connection() -> None:
    async def main() -> None:
        # A tiny budget so the test sends little: 3 at once, then 20 a second.
        async with running(message_rate=20.0, message_burst=3) as env:
            async with connect(env.url, compression=None, ping_interval=None) as ws:
                await ws.send(hello(), text=True)
                assert isinstance(m.decode_from_server(await ws.recv()), m.Welcome)
                for i in range(20):  # one every 0.1 s: 2 refilled between two
                    await ws.send(m.encode(m.Ping(ts=i)), text=True)
                    async with asyncio.timeout(WAIT_S):
                        assert m.decode_from_server(await ws.recv()) == m.Pong(ts=i)
                    await asyncio.sleep(0.1)
            assert env.gateway.stats()["evictions_too_many_messages"] == 0

    run(main)


def test_a_websocket_ping_flood_before_hello_is_cut_off_by_the_frame_budget() -> None:
    async def main() -> None:
        async with running() as env:
            host, port = env.url.removeprefix("ws://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await reader.readuntil(b"\r\n\r\n")
            received = bytearray()

            async def read() -> None:
                with contextlib.suppress(ConnectionError):
                    while chunk := await reader.read(65536):
                        received.extend(chunk)

            reading = asyncio.create_task(read())
            ping = bytes([0x89, 0x80]) + b"\0\0\0\0"  # a masked, empty ping control frame
            with contextlib.suppress(ConnectionError):
                for _ in range(100):  # 100 x 1,000 pings, no hello: websockets answers each
                    writer.write(ping * 1000)
                    await writer.drain()
                    await asyncio.sleep(0)
            try:
                async with asyncio.timeout(WAIT_S):
                    await reading  # the gateway closed or aborted the connection
            except TimeoutError:
                raise AssertionError("the flooding connection was never closed") from None
            writer.close()
            # websockets answers the pings of one read (up to 256 KiB, ~44,000 pings) before the
            # budget sees them; the flood is cut off there, not after all 100,000.
            assert received.count(b"\x8a\x00") < 50_000
            assert env.gateway.stats()["evictions_too_many_messages"] == 1

    run(main)
