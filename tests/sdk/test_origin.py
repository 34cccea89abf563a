"""The simulator's HTTP client against a small real server: keep-alive, retry of a request on
an idle connection the server closed, chunked bodies, the request log."""

from __future__ import annotations

import asyncio

import pytest

from hopcast.errors import ConfigError
from hopcast.sdk.origin import OriginError, OriginPool

#: Bound on waiting for the test server to do something; a healthy run needs milliseconds.
WAIT_S = 20.0


async def _serve(answers: list[bytes], *, close_after: int | None = None) -> tuple[int, list[int]]:
    """Answer each request in turn with the next of ``answers``; close a connection after
    ``close_after`` requests on it. Returns the port and, per connection, its request count
    (negated once the server has closed that connection)."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        me = len(connections) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"Content-Length:" in head:
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                connections[me] += 1
                writer.write(answers.pop(0))
                await writer.drain()
                if close_after is not None and connections[me] >= close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()
        await writer.wait_closed()
        connections[me] = -connections[me]

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return port, connections


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_requests_reuse_one_keep_alive_connection_and_are_logged() -> None:
    async def main() -> None:
        port, connections = await _serve([_ok(b"one"), _ok(b"two"), _ok(b"three")])
        pool = OriginPool(
            f"http://127.0.0.1:{port}", local_host="127.0.0.2", clock=iter(range(10)).__next__
        )
        assert (await pool.get("/a", "manifest")).body == b"one"
        assert (await pool.get("/b", "payload")).body == b"two"
        answer = await pool.request("POST", "/c", "token", b"{}")
        assert (answer.status, answer.body) == (200, b"three")
        assert connections == [3]
        assert pool.log == [(0, "manifest"), (1, "payload"), (2, "token")]
        await pool.close()

    asyncio.run(main())


def test_a_request_on_an_idle_connection_the_server_closed_is_sent_again() -> None:
    async def main() -> None:
        port, connections = await _serve([_ok(b"first"), _ok(b"second")], close_after=1)
        pool = OriginPool(f"http://127.0.0.1:{port}")
        assert (await pool.get("/", "payload")).body == b"first"
        async with asyncio.timeout(WAIT_S):  # until the server has closed that connection
            while connections != [-1]:
                await asyncio.sleep(0.001)
        assert (await pool.get("/", "payload")).body == b"second"
        assert [abs(n) for n in connections] == [1, 1] and pool.failures == 0
        await pool.close()

    asyncio.run(main())


def test_chunked_bodies_and_statuses_without_a_body_are_read() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    not_modified = b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'

    async def main() -> None:
        port, _ = await _serve([chunked, not_modified, _ok(b"after")])
        pool = OriginPool(f"http://127.0.0.1:{port}")
        assert (await pool.get("/", "payload")).body == b"abcde"
        answer = await pool.get("/", "payload")
        assert (answer.status, answer.headers["etag"], answer.body) == (304, '"x"', b"")
        assert (await pool.get("/", "payload")).body == b"after"
        await pool.close()

    asyncio.run(main())


def test_an_unreachable_origin_or_a_non_http_answer_raises_origin_error() -> None:
    async def main() -> None:
        port, _ = await _serve([b"SSH-2.0-nope\r\n\r\n"])
        pool = OriginPool(f"http://127.0.0.1:{port}")
        with pytest.raises(OriginError, match="status line"):
            await pool.get("/", "payload")
        closed = OriginPool("http://127.0.0.1:1")
        with pytest.raises(OriginError, match="ConnectionRefused"):
            await closed.get("/", "payload")
        assert pool.failures == 1 and closed.failures == 1

    asyncio.run(main())
    with pytest.raises(ConfigError):
        OriginPool("ws://127.0.0.1:1")
