"""TCP ports for servers, held from the moment they are chosen: no window in which another
process can take them (Linux semantics).

"Pick a free port, close it, tell the server to bind it" is a race: between the close and the
server's bind, another process may take the port, by binding it or simply by connecting
somewhere (outgoing connections take ports from the same ephemeral range; a client retrying a
dead loopback port can even connect to itself on it). On a busy machine that race is lost
often enough to fail. Two ways that have no window:

- :func:`listening_socket` — the server's own socket, bound and listening before the server
  starts. Port 0 picks a free port, read back with ``getsockname``; a client that connects
  before the server accepts waits in the backlog, so nobody needs to poll for readiness. Hand
  the socket to the server (``uvicorn.Server.run(sockets=[sock])``) and print the port.
- :class:`PortReservation` — for a server that must be told a port number, possibly more than
  once (a child process started with ``--port P``; Redis, PostgreSQL, Kafka; a server restarted
  on the port its clients know). The reservation is a socket bound to the port, never
  listening, with ``SO_REUSEADDR`` set after the bind. While it is held:

  1. no outgoing connection and no ``bind(port 0)`` gets the port (the kernel skips ports a
     socket was explicitly bound to), and a plain ``bind`` to it fails;
  2. a server that sets ``SO_REUSEADDR`` before binding — Redis, PostgreSQL, every JVM server
     socket, uvicorn, asyncio's ``create_server``, Python's ``http.server`` — binds and listens
     on it; only one can listen at a time;
  3. when that server stops, the port stays reserved, so the same server can come back on it.

  Close the reservation when the port's servers are gone for good.
"""

from __future__ import annotations

import socket
from types import TracebackType

#: Connections the kernel queues for a listening socket before the server accepts them: enough
#: for a burst of devices or test clients arriving while the server starts (uvicorn's default).
DEFAULT_BACKLOG = 2048


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listening_socket(host: str, port: int, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (``SO_REUSEADDR``, as servers set it).

    Args:
        host: the address to listen on (IPv6 if it contains a colon).
        port: the port; 0 picks a free one (read it back: ``sock.getsockname()[1]``).
        backlog: connections queued until the server accepts them.

    Returns:
        The socket; the caller hands it to its server and closes it when the server is done.

    Raises:
        OSError: the address cannot be bound (the port is taken, the host is not local).
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class PortReservation:
    """A TCP port held for a server that binds it by number (see the module docstring).

    Args:
        host: the address (the server must bind the same one, e.g. ``127.0.0.1``).
        port: the port to reserve; 0 lets the kernel pick a free one.

    Raises:
        OSError: ``port`` is in use (by a server, a connection, or another reservation).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._sock: socket.socket | None = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            # Bound without SO_REUSEADDR: succeeds only if no socket at all uses the port.
            self._sock.bind((host, port))
            # Then allowed to share it with one server that sets SO_REUSEADDR too.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        """Give the port back (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> PortReservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "held" if self._sock is not None else "released"
        return f"PortReservation({self.host}:{self.port}, {state})"


def reuse_port_holder(host: str, port: int) -> socket.socket:
    """A socket that holds ``host:port`` for processes sharing it with ``SO_REUSEPORT``.

    It is bound with ``SO_REUSEPORT`` and never listens, so the kernel never hands it a
    connection: the workers that bind the same port with ``SO_REUSEPORT`` (same user) get them
    all, and the port stays theirs while a worker restarts. Port 0 picks a free port for all of
    them (read it back with ``getsockname``).

    Raises:
        OSError: the port is taken by a socket without ``SO_REUSEPORT`` or of another user.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
