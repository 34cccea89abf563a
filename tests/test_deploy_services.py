"""deploy/postgres.sh and deploy/kafka.sh: status tells a running server from a free port, a
second start is harmless, the Kafka jars are checked against their pinned checksums, bad usage
is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hopcast.ports import PortReservation

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def script(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEPLOY / name), *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_postgres_status_and_a_second_start(
    postgres_dsn: str, reserved_port: PortReservation
) -> None:
    port = postgres_dsn.rsplit(":", 1)[1].split("/")[0]
    running = script("postgres.sh", "status", "--port", port)
    assert running.returncode == 0 and postgres_dsn in running.stdout
    again = script("postgres.sh", "start", "--port", port)
    assert again.returncode == 0 and "already" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == postgres_dsn
    # a reserved port: nothing listens there, and nothing can start to
    stopped = script("postgres.sh", "status", "--port", str(reserved_port.port))
    assert stopped.returncode == 1 and "not accepting" in stopped.stdout


def test_kafka_status(kafka_bootstrap: str, reserved_port: PortReservation) -> None:
    port = kafka_bootstrap.rsplit(":", 1)[1]
    running = script("kafka.sh", "status", "--port", port)
    assert running.returncode == 0 and "serving" in running.stdout
    stopped = script("kafka.sh", "status", "--port", str(reserved_port.port))
    assert stopped.returncode == 1 and "not serving" in stopped.stdout


def test_kafka_fetch_replaces_a_jar_that_fails_its_checksum(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # kafka_bootstrap made sure the cache is filled; work on a copy of it.
    versions = dict(
        line.split("=", 1)
        for line in (DEPLOY / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    name = f"kafka-{versions['KAFKA_SCALA']}-{versions['KAFKA_VERSION']}"
    cache = Path(os.environ.get("HOPCAST_CACHE", Path.home() / ".cache" / "hopcast"))
    shutil.copytree(cache / name, tmp_path / name)
    jar = tmp_path / name / "libs" / f"kafka-clients-{versions['KAFKA_VERSION']}.jar"
    jar.write_bytes(jar.read_bytes() + b"tampered")
    env = {**os.environ, "HOPCAST_CACHE": str(tmp_path)}
    fetched = script("kafka.sh", "fetch", env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert "fetching" in fetched.stderr  # the tampered cache was not trusted
    assert not jar.read_bytes().endswith(b"tampered")


def test_bad_usage_exits_2() -> None:
    for name in ("postgres.sh", "kafka.sh"):
        assert script(name).returncode == 2
        assert script(name, "restart").returncode == 2
        assert script(name, "start", "--port", "http").returncode == 2
        assert script(name, "status", "--bogus").returncode == 2


def test_install_check_finds_every_package_the_tests_need() -> None:
    install = Path(__file__).resolve().parent.parent / "deploy" / "install.sh"
    checked = subprocess.run([str(install), "--check"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    bad = subprocess.run([str(install), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage" in bad.stderr
