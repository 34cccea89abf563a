"""Shared fixtures. ``kv`` runs a test once per KV backend (the contract suite uses it);
``redis_server`` / ``redis_url`` start a real Redis through ``deploy/redis.sh``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.memory import MemoryKV

BACKENDS = ["memory", "lmdb", "redis", "redis-cluster"]


def make_kv(name: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> KVStore:
    if name == "memory":
        return MemoryKV()
    if name == "lmdb":
        return LmdbKV(tmp_path / "lmdb", sync=False)
    if name == "redis" and request is not None:
        from hopcast.kv.redis import RedisKV

        url = request.getfixturevalue("redis_url")
        return RedisKV(url, prefix=request.getfixturevalue("redis_prefix"))
    if name == "redis-cluster" and request is not None:
        from hopcast.kv.redis import RedisKV

        node = request.getfixturevalue("redis_cluster_url").partition("://")[2]
        return RedisKV(f"redis+cluster://{node}", prefix=request.getfixturevalue("redis_prefix"))
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    store = make_kv(request.param, tmp_path, request)
    yield store
    store.close()


# -- Redis (the live fan-out's tests) ----------------------------------------------------------

REDIS_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "redis.sh"


class RedisServer:
    """A redis-server on a free loopback port, started and stopped through deploy/redis.sh."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.dir = directory
        self.url = f"redis://127.0.0.1:{port}/0"

    def _script(self, action: str) -> None:
        cmd = [str(REDIS_SCRIPT), action, "--port", str(self.port), "--dir", str(self.dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis for the session (started on first use). Missing redis-server fails the test."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail(
            "redis-server is not installed; the live fan-out tests need a real Redis: "
            "apt-get install -y redis-server"
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = RedisServer(port, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's Redis (``redis://127.0.0.1:<port>/0``)."""
    return redis_server.url


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests sharing the Redis do not see each other."""
    return f"test:{request.node.name}:{os.urandom(4).hex()}:".replace("{", "(").replace("}", ")")


# -- PostgreSQL and Kafka (the CDC and Kafka sources' tests) -----------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


class DeployedService:
    """A service started and stopped through ``deploy/<script> start|stop --port P --dir D``."""

    def __init__(self, script: str, port: int, directory: Path, *extra: str) -> None:
        self.script = DEPLOY / script
        self.port = port
        self.dir = directory
        self.extra = list(extra)

    def run(self, action: str, timeout: float) -> str:
        cmd = [str(self.script), action, "--port", str(self.port), "--dir", str(self.dir)]
        cmd += self.extra
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s")
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr.strip()}\n"
                f"{done.stdout.strip()}"
            )
        return done.stdout

    def stop(self) -> None:
        """Stop the service and remove its directory (even if stopping failed)."""
        try:
            self.run("stop", timeout=60)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self) -> None:
        """Stop whatever a failed start left running (errors ignored), remove the directory."""
        cmd = [str(self.script), "stop", "--port", str(self.port), "--dir", str(self.dir)]
        subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def _ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together while they are picked)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _start(make: Callable[[], DeployedService], timeout: float) -> tuple[DeployedService, str]:
    """Start a service on fresh ports, three tries: a port picked free may be taken (by another
    process's outgoing connection) before the server binds it."""
    for attempt in range(3):
        server = make()
        try:
            return server, server.run("start", timeout=timeout)
        except (Exception, pytest.fail.Exception):
            server.discard()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _service_dir(prefix: str) -> Path:
    # Under /tmp, not pytest's temp dir (0700, root's): as root, PostgreSQL runs as the
    # 'postgres' user, who must reach its data directory.
    import tempfile

    base = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL (wal_level=logical, trust auth) on a free loopback port for the session,
    started on first use through ``deploy/postgres.sh``; its DSN. Missing server binaries fail
    the test with the install command."""
    import glob

    if not glob.glob("/usr/lib/postgresql/*/bin/postgres") and shutil.which("postgres") is None:
        pytest.fail(
            "PostgreSQL server is not installed; the CDC tests need a real one: "
            "apt-get install -y postgresql"
        )
    server, out = _start(
        lambda: DeployedService("postgres.sh", *_ports(1), _service_dir("hopcast-postgres-")), 90
    )
    dsn = out.strip().splitlines()[-1]
    try:
        yield dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A single-node Apache Kafka broker (KRaft, broker + controller) on free loopback ports for
    the session, started on first use through ``deploy/kafka.sh`` (which fetches the pinned jars
    from Maven Central into ~/.cache/hopcast once); its bootstrap address. No Java, or jars that
    cannot be fetched, fail the test with the reason."""
    if shutil.which("java") is None:
        pytest.fail(
            "java is not installed; the Kafka tests need it: apt-get install -y default-jre"
        )

    def make() -> DeployedService:
        port, controller = _ports(2)
        directory = _service_dir("hopcast-kafka-")
        return DeployedService("kafka.sh", port, directory, "--controller-port", str(controller))

    server, _ = _start(make, 600)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


# -- Redis Cluster (the scale-out store's tests) -------------------------------------------------


class RedisClusterService(DeployedService):
    """A Redis Cluster of ``nodes`` masters on consecutive ports from ``port``, started and
    stopped through ``deploy/redis.sh cluster-start|cluster-stop``."""

    def __init__(self, port: int, directory: Path, nodes: int = 3) -> None:
        super().__init__("redis.sh", port, directory, "--nodes", str(nodes))
        self.nodes = nodes
        self.ports = list(range(port, port + nodes))
        self.url = f"redis://127.0.0.1:{port}"

    def run(self, action: str, timeout: float) -> str:
        return super().run(f"cluster-{action}", timeout)

    def discard(self) -> None:
        cmd = [str(self.script), "cluster-stop", "--port", str(self.port), "--dir", str(self.dir)]
        subprocess.run(cmd + self.extra, capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def _consecutive_ports(count: int, bus_offset: int = 10000) -> int:
    """The first of ``count`` consecutive free loopback ports whose cluster bus ports (port +
    ``bus_offset``) are free too; picked below the kernel's ephemeral range (32768-60999), where
    outgoing connections do not take them."""
    import random

    for _ in range(100):
        base = random.randrange(10000, 22000 - count)
        wanted = [*range(base, base + count), *range(base + bus_offset, base + bus_offset + count)]
        socks: list[socket.socket] = []
        try:
            for port in wanted:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free loopback ports found")


def start_redis_cluster(nodes: int = 3) -> RedisClusterService:
    """A fresh Redis Cluster on free ports (the caller stops it with ``.stop()``)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail(
            "redis-server is not installed; the Redis Cluster tests need a real one: "
            "apt-get install -y redis-server"
        )

    def make() -> RedisClusterService:
        port = _consecutive_ports(nodes)
        return RedisClusterService(port, _service_dir("hopcast-redis-cluster-"), nodes)

    server, _ = _start(make, 60)
    assert isinstance(server, RedisClusterService)
    return server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterService]:
    """A Redis Cluster (3 masters, no replicas) on free loopback ports for the session, started
    on first use through ``deploy/redis.sh cluster-start``."""
    server = start_redis_cluster()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisClusterService) -> str:
    """The URL of one node of the session's Redis Cluster (``redis://127.0.0.1:<port>``); a
    cluster client discovers the others from it."""
    return redis_cluster.url


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisClusterService]:
    """A Redis Cluster of this test's own (3 masters), for tests that take nodes down; stopped
    after the test."""
    server = start_redis_cluster()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def free_cluster_port() -> int:
    """The first of three consecutive free loopback ports whose cluster bus ports are free too,
    for a test that starts a Redis Cluster itself."""
    return _consecutive_ports(3)
