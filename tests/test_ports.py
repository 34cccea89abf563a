"""Ports held from the moment they are chosen: a listening socket handed to the server, a
reservation a server (and its restart) binds by number, a port shared by SO_REUSEPORT workers."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from hopcast.ports import PortReservation, listening_socket, reuse_port_holder

#: Bound on a local redis-server's start; reached only if it hangs.
REDIS_START_S = 30.0


def _server_socket(port: int) -> socket.socket:
    """A server's socket as servers make it: SO_REUSEADDR, then bind, then listen."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_listening_socket_on_port_0_reports_its_port_and_queues_early_clients() -> None:
    with listening_socket("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port > 0
        # the server has not accepted yet: the client still connects, and waits in the backlog
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"hello")
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.recv(5) == b"hello"


def test_a_listening_socket_on_a_taken_port_raises() -> None:
    with listening_socket("127.0.0.1", 0) as taken, pytest.raises(OSError):
        listening_socket("127.0.0.1", taken.getsockname()[1])


def test_a_reserved_port_refuses_connections_and_plain_binds() -> None:
    with PortReservation() as reservation:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", reservation.port), timeout=5)
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", reservation.port))


def test_a_reserved_port_cannot_be_reserved_twice() -> None:
    with PortReservation() as reservation, pytest.raises(OSError):
        PortReservation(port=reservation.port)


def test_a_server_binds_a_reserved_port_and_a_second_one_cannot_while_it_listens() -> None:
    with PortReservation() as reservation:
        server = _server_socket(reservation.port)
        with server:
            with socket.create_connection(("127.0.0.1", reservation.port), timeout=5):
                pass
            with pytest.raises(OSError):
                _server_socket(reservation.port)
        # the server is gone; its port is still reserved, and the next server takes it
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", reservation.port), timeout=5)
        with _server_socket(reservation.port):
            pass


def test_redis_comes_back_on_its_reserved_port_after_a_kill(tmp_path: Path) -> None:
    with PortReservation() as reservation:
        argv = ["redis-server", "--port", str(reservation.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        for _ in range(2):  # start, kill -9, start again on the same port
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + REDIS_START_S
                while True:
                    assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
                    try:
                        with socket.create_connection(("127.0.0.1", reservation.port), 5) as c:
                            c.sendall(b"PING\r\n")
                            assert c.recv(7) == b"+PONG\r\n"
                            break
                    except ConnectionRefusedError:
                        assert time.monotonic() < deadline, "redis did not answer PING in time"
                        time.sleep(0.05)
            finally:
                proc.kill()
                proc.wait()


def test_workers_share_a_held_reuse_port_and_the_holder_gets_no_connection() -> None:
    with reuse_port_holder("127.0.0.1", 0) as holder:
        port = holder.getsockname()[1]
        workers = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            sock.settimeout(5)
            workers.append(sock)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        accepted = 0
        for sock in workers:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted += 1
        assert accepted == len(clients)  # every connection went to a worker
        for sock in [*workers, *clients]:
            sock.close()
        # the workers are gone: the port stays held, refusing connections, for their restart
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
