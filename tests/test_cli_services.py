"""``hopcast services up|down|status``: real Redis, a real Redis Cluster, PostgreSQL and Kafka
started and stopped through the command on loopback ports reserved for the test (held while the
services bind them); the status table, its JSON and exit codes; a missing server named with its
package; the scripts shipped inside the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from click.testing import CliRunner, Result
from redis.cluster import RedisCluster

from hopcast.cli import cli
from hopcast.ports import PortReservation

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ("kafka.sh", "postgres.sh", "redis.sh", "versions.env", "kafka-jars.sha256")


@pytest.fixture
def free_ports() -> Iterator[Callable[[int], list[int]]]:
    """``free_ports(n)``: n loopback ports reserved until the test ends (a service binds its
    reserved port; a port where nothing runs stays one)."""
    held: list[PortReservation] = []

    def reserve(count: int) -> list[int]:
        held.extend(PortReservation() for _ in range(count))
        return [r.port for r in held[-count:]]

    yield reserve
    for reservation in held:
        reservation.close()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "240"})


def services(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, ["services", *args], catch_exceptions=False)


def status_doc(runner: CliRunner, *args: str) -> tuple[int, dict[str, Any]]:
    result = services(runner, "status", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in doc["services"]}


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A --dir base under /tmp that the 'postgres' user can traverse (PostgreSQL runs as that
    user when the tests run as root)."""
    base = Path(tempfile.mkdtemp(prefix="hopcast-services-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


def test_redis_and_a_redis_cluster_up_status_down(
    runner: CliRunner,
    service_dir: Path,
    free_cluster_port: int,
    free_ports: Callable[[int], list[int]],
) -> None:
    port, kafka_port = free_ports(2)
    cport = free_cluster_port
    where = [
        "--redis-port",
        str(port),
        "--redis-cluster-port",
        str(cport),
        "--dir",
        str(service_dir),
    ]
    try:
        up = services(runner, "up", "redis", "redis-cluster", *where)
        assert up.exit_code == 0, up.stderr
        assert f"starting redis on 127.0.0.1:{port} … up in " in up.stderr
        assert f"starting redis-cluster on 127.0.0.1:{cport} … up in " in up.stderr
        table = up.stdout.splitlines()
        assert table[0].split() == ["service", "port", "state", "url"]
        assert table[1].split() == ["redis", str(port), "up", f"redis://127.0.0.1:{port}/0"]
        cluster_row = [
            "redis-cluster",
            f"{cport}-{cport + 2}",
            "up",
            f"redis+cluster://127.0.0.1:{cport}",
        ]
        assert table[2].split() == cluster_row

        # Really up, where the table says: a server, and a cluster that spreads keys.
        single = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        assert single.ping()
        single.close()
        client = RedisCluster.from_url(f"redis://127.0.0.1:{cport}")
        try:
            keys = [f"services-test:{i}" for i in range(60)]
            for key in keys:
                client.set(key, "v")
            assert {client.get_node_from_key(k).port for k in keys} == {cport, cport + 1, cport + 2}
        finally:
            client.close()
        assert (service_dir / f"redis-{port}" / "redis.pid").is_file()
        assert (service_dir / f"redis-cluster-{cport}" / str(cport) / "nodes.conf").is_file()

        code, doc = status_doc(runner, "redis", "redis-cluster", *where)
        assert code == 0 and doc["up"] is True
        assert rows(doc)["redis-cluster"]["ports"] == [cport, cport + 1, cport + 2]
        assert rows(doc)["redis"]["url"] == f"redis://127.0.0.1:{port}/0"

        # One asked-for service down (Kafka on a free port) makes status exit 1.
        mixed = services(
            runner, "status", "redis", "kafka", *where, "--kafka-port", str(kafka_port)
        )
        assert mixed.exit_code == 1
        assert mixed.stdout.splitlines()[1].split()[:3] == ["redis", str(port), "up"]
        assert mixed.stdout.splitlines()[2].split()[:3] == ["kafka", str(kafka_port), "down"]
        assert f"kafka: kafka not serving on 127.0.0.1:{kafka_port}" in mixed.stdout

        again = services(runner, "up", "redis", "redis-cluster", *where)
        assert again.exit_code == 0
        assert again.stderr.count("already up") == 2
    finally:
        down = services(runner, "down", "redis", "redis-cluster", *where)
    assert down.exit_code == 0, down.stderr
    assert f"stopping redis on 127.0.0.1:{port} … stopped in " in down.stderr
    assert f"stopping redis-cluster on 127.0.0.1:{cport} … stopped in " in down.stderr
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=cport + 1).ping()

    code, doc = status_doc(runner, "redis", "redis-cluster", *where)
    assert code == 1 and doc["up"] is False
    assert not rows(doc)["redis"]["up"] and not rows(doc)["redis-cluster"]["up"]
    assert f"127.0.0.1:{cport + 2} not answering" in rows(doc)["redis-cluster"]["detail"]


def test_postgres_up_gives_a_dsn_that_connects(
    runner: CliRunner, service_dir: Path, free_ports: Callable[[int], list[int]]
) -> None:
    (port,) = free_ports(1)
    where = ["--postgres-port", str(port), "--dir", str(service_dir)]
    try:
        up = services(runner, "up", "postgres", *where)
        assert up.exit_code == 0, up.stderr
        code, doc = status_doc(runner, "postgres", *where)
        assert code == 0
        dsn = rows(doc)["postgres"]["url"]
        assert dsn == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
    finally:
        down = services(runner, "down", "postgres", *where)
    assert down.exit_code == 0, down.stderr
    assert status_doc(runner, "postgres", *where)[0] == 1


def test_kafka_down_then_up_then_down(
    runner: CliRunner, service_dir: Path, free_ports: Callable[[int], list[int]]
) -> None:
    from confluent_kafka.admin import AdminClient

    port, controller = free_ports(2)
    where = ["--kafka-port", str(port), "--kafka-controller-port", str(controller)]
    where += ["--dir", str(service_dir)]
    code, doc = status_doc(runner, "kafka", *where)
    assert code == 1 and rows(doc)["kafka"]["up"] is False
    try:
        up = services(runner, "up", "kafka", *where)
        assert up.exit_code == 0, up.stderr
        assert f"starting kafka on 127.0.0.1:{port} … up in " in up.stderr
        code, doc = status_doc(runner, "kafka", *where)
        assert code == 0
        bootstrap = rows(doc)["kafka"]["url"]
        assert bootstrap == f"127.0.0.1:{port}"
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=20)
        assert metadata.brokers and next(iter(metadata.brokers.values())).port == port
    finally:
        down = services(runner, "down", "kafka", *where)
    assert down.exit_code == 0, down.stderr
    assert status_doc(runner, "kafka", *where)[0] == 1


def test_a_missing_server_is_named_with_its_package(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    free_ports: Callable[[int], list[int]],
) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server, no redis-cli
    up = services(runner, "up", "redis", "--redis-port", str(port), "--dir", str(tmp_path))
    assert up.exit_code == 1
    message = " ".join(up.stderr.split())
    assert "not installed: redis-server, redis-cli" in message
    assert "apt-get install -y redis-server" in message and "deploy/install.sh" in message
    assert "starting" not in up.stderr  # nothing was tried
    status = services(runner, "status", "redis", "--redis-port", str(port))
    assert status.exit_code == 1
    assert "redis-cli not found: install it with 'apt-get install -y redis-server'" in status.stdout


def test_unknown_service_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["services", "up", "mysql"])
    assert result.exit_code == 2 and "mysql" in result.stderr


def test_the_scripts_ship_in_the_wheel_and_deploy_links_to_them(tmp_path: Path) -> None:
    package = ROOT / "src" / "hopcast" / "deploy"
    for name in PACKAGED:
        # The repo's deploy/<name> is the packaged script, so make test, CI and the command
        # run one and the same file.
        assert (ROOT / "deploy" / name).resolve() == (package / name).resolve()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("hopcast-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in PACKAGED:
            info = zf.getinfo(f"hopcast/deploy/{name}")
            assert zf.read(info) == (package / name).read_bytes()
            if name.endswith(".sh"):
                assert (info.external_attr >> 16) & 0o111, f"{name} lost its exec bits"
