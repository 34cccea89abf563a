"""Shared fixtures. ``kv`` runs a test once per KV backend (the contract suite uses it);
``redis_server`` / ``redis_url`` start a real Redis through ``deploy/redis.sh``.

Every service gets ports reserved for its whole life (:class:`hopcast.ports.PortReservation`):
held by this process from the moment they are picked, so nothing else takes them before the
server binds them, nor while a test stops and restarts the server on them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.memory import MemoryKV
from hopcast.ports import PortReservation

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


#: Bound on deploy/redis.sh start|stop (it waits up to 30 s for PING, 10 s for a stop).
REDIS_SCRIPT_S = 60


class RedisServer:
    """A redis-server on a reserved loopback port, started and stopped (and started again on
    the same port) through deploy/redis.sh."""

    def __init__(self, reservation: PortReservation, directory: Path) -> None:
        self.reservation = reservation
        self.port = reservation.port
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _script(self, action: str) -> None:
        cmd = [str(REDIS_SCRIPT), action, "--port", str(self.port), "--dir", str(self.dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=REDIS_SCRIPT_S)
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
    with PortReservation() as reservation:
        server = RedisServer(reservation, tmp_path_factory.mktemp("redis"))
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
    """A service started and stopped through ``deploy/<script> start|stop --port P --dir D``, on
    ports reserved for it (released by :meth:`stop` and :meth:`discard`)."""

    def __init__(
        self, script: str, ports: list[PortReservation], directory: Path, *extra: str
    ) -> None:
        self.script = DEPLOY / script
        self.reservations = ports
        self.port = ports[0].port
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
        """Stop the service, remove its directory and release its ports (even if stopping
        failed)."""
        try:
            self.run("stop", timeout=STOP_TIMEOUT_S)
        finally:
            self._release()

    def discard(self) -> None:
        """Stop whatever a failed start left running (errors ignored), remove the directory,
        release the ports."""
        cmd = [str(self.script), "stop", "--port", str(self.port), "--dir", str(self.dir)]
        subprocess.run(cmd + self.extra, capture_output=True, timeout=STOP_TIMEOUT_S, check=False)
        self._release()

    def _release(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for reservation in self.reservations:
            reservation.close()


#: Bound on a deploy script's stop (its own waits: 30 s for Kafka's controlled shutdown).
STOP_TIMEOUT_S = 60


def reserve_ports(count: int) -> list[PortReservation]:
    """``count`` distinct free loopback ports, each reserved until its reservation is closed."""
    return [PortReservation() for _ in range(count)]


def _start(make: Callable[[], DeployedService], timeout: float) -> tuple[DeployedService, str]:
    """Start a service on its reserved ports; on failure stop what it left and fail the test.
    No retry: the ports are held from the moment they are picked, so no other process can
    have taken them, and a service that fails to start has a reason worth reading."""
    server = make()
    try:
        return server, server.run("start", timeout=timeout)
    except BaseException:
        server.discard()
        raise


#: Bounds on a service's start, only reached if it hangs: the scripts' own waits (PostgreSQL:
#: pg_ctl's 120 s plus 10 s; Kafka: 180 s for the broker; Redis Cluster: 30 s per node, 60 s
#: for the cluster) on top of initdb, or a first fetch of the Kafka jars from Maven Central.
POSTGRES_START_S = 180
KAFKA_START_S = 600
REDIS_CLUSTER_START_S = 180


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
        lambda: DeployedService("postgres.sh", reserve_ports(1), _service_dir("hopcast-postgres-")),
        POSTGRES_START_S,
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
        ports = reserve_ports(2)  # the broker's and the controller's
        directory = _service_dir("hopcast-kafka-")
        return DeployedService(
            "kafka.sh", ports, directory, "--controller-port", str(ports[1].port)
        )

    server, _ = _start(make, KAFKA_START_S)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


# -- Redis Cluster (the scale-out store's tests) -------------------------------------------------


class RedisClusterService(DeployedService):
    """A Redis Cluster of ``nodes`` masters on consecutive reserved ports (and their cluster bus
    ports), started and stopped through ``deploy/redis.sh cluster-start|cluster-stop``; a node
    taken down comes back on its own port (``run("start", ...)``)."""

    def __init__(self, ports: list[PortReservation], directory: Path, nodes: int = 3) -> None:
        super().__init__("redis.sh", ports, directory, "--nodes", str(nodes))
        self.nodes = nodes
        self.ports = list(range(self.port, self.port + nodes))
        self.url = f"redis://127.0.0.1:{self.port}"

    def run(self, action: str, timeout: float) -> str:
        return super().run(f"cluster-{action}", timeout)

    def discard(self) -> None:
        cmd = [str(self.script), "cluster-stop", "--port", str(self.port), "--dir", str(self.dir)]
        subprocess.run(cmd + self.extra, capture_output=True, timeout=STOP_TIMEOUT_S, check=False)
        self._release()


#: Redis Cluster's bus port of a node is its port + 10000.
CLUSTER_BUS_OFFSET = 10000


def reserve_cluster_ports(count: int) -> list[PortReservation]:
    """Reservations of ``count`` consecutive loopback ports and of their cluster bus ports
    (port + 10000), the first port first. Picked below the kernel's ephemeral range
    (32768-60999), so the bus ports stay below 65536 and ephemeral use never competes."""
    import random

    for _ in range(200):
        base = random.randrange(10000, 22000 - count)
        wanted = [*range(base, base + count)]
        wanted += [p + CLUSTER_BUS_OFFSET for p in wanted]
        held: list[PortReservation] = []
        try:
            for port in wanted:
                held.append(PortReservation(port=port))
            return held
        except OSError:  # taken: try another base
            for reservation in held:
                reservation.close()
    raise RuntimeError(f"no {count} consecutive free loopback ports (and bus ports) found")


def start_redis_cluster(nodes: int = 3) -> RedisClusterService:
    """A fresh Redis Cluster on free ports (the caller stops it with ``.stop()``)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail(
            "redis-server is not installed; the Redis Cluster tests need a real one: "
            "apt-get install -y redis-server"
        )

    def make() -> RedisClusterService:
        ports = reserve_cluster_ports(nodes)
        return RedisClusterService(ports, _service_dir("hopcast-redis-cluster-"), nodes)

    server, _ = _start(make, REDIS_CLUSTER_START_S)
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
def free_cluster_port() -> Iterator[int]:
    """The first of three consecutive loopback ports whose cluster bus ports are reserved too,
    for a test that starts a Redis Cluster itself (held until the test ends)."""
    held = reserve_cluster_ports(3)
    try:
        yield held[0].port
    finally:
        for reservation in held:
            reservation.close()


@pytest.fixture
def reserved_port() -> Iterator[PortReservation]:
    """A loopback port reserved for this test (see :mod:`hopcast.ports`): for a server the test
    starts with ``--port P`` (the server must set ``SO_REUSEADDR``, as they all do), or as a
    port where nothing listens and nothing can start listening, so connecting to it is refused."""
    with PortReservation() as reservation:
        yield reservation
