"""deploy/redis.sh: status answers for a running and a stopped server; bad usage is refused."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "redis.sh"


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_status_tells_a_running_server_from_a_free_port(redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    running = script("status", "--port", port)
    assert running.returncode == 0 and "answering" in running.stdout
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = str(sock.getsockname()[1])
    stopped = script("status", "--port", free)
    assert stopped.returncode == 1 and "not answering" in stopped.stdout


def test_start_twice_and_stop_twice_are_harmless(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    where = ("--port", port, "--dir", str(tmp_path))
    try:
        assert script("start", *where).returncode == 0
        assert (tmp_path / "redis.pid").is_file()
        again = script("start", *where)
        assert again.returncode == 0 and "already" in again.stdout
    finally:
        assert script("stop", *where).returncode == 0
    assert script("status", *where).returncode == 1
    assert script("stop", *where).returncode == 0
    assert not (tmp_path / "redis.pid").exists()


def test_bad_usage_exits_2() -> None:
    assert script().returncode == 2
    assert script("restart").returncode == 2
    assert script("start", "--port", "http").returncode == 2
    assert script("status", "--bogus").returncode == 2
