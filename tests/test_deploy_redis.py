"""deploy/redis.sh: status answers for a running and a stopped server; bad usage is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hopcast.ports import PortReservation

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "redis.sh"


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_status_tells_a_running_server_from_a_free_port(
    redis_url: str, reserved_port: PortReservation
) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    running = script("status", "--port", port)
    assert running.returncode == 0 and "answering" in running.stdout
    # a reserved port: nothing listens there, and nothing can start to
    stopped = script("status", "--port", str(reserved_port.port))
    assert stopped.returncode == 1 and "not answering" in stopped.stdout


def test_start_twice_and_stop_twice_are_harmless(
    tmp_path: Path, reserved_port: PortReservation
) -> None:
    port = str(reserved_port.port)  # redis binds it (SO_REUSEADDR); nothing else can
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
