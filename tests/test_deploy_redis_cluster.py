"""deploy/redis.sh cluster-start|cluster-stop|cluster-status: a real Redis Cluster of three
masters on loopback, its slots spread over the nodes, a lost node brought back, bad usage
refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Protocol

import redis
from redis.cluster import RedisCluster

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "redis.sh"


class RedisClusterService(Protocol):  # tests/conftest.py's
    port: int
    ports: list[int]
    dir: Path
    url: str

    def stop(self) -> None: ...


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_keys_land_on_every_node_and_the_cluster_is_ok(
    redis_cluster: RedisClusterService, redis_cluster_url: str
) -> None:
    assert redis_cluster_url == f"redis://127.0.0.1:{redis_cluster.ports[0]}"
    prefix = f"test:deploy-cluster:{os.urandom(4).hex()}:"
    client = RedisCluster.from_url(redis_cluster_url)
    try:
        assert {node.port for node in client.get_primaries()} == set(redis_cluster.ports)
        keys = [f"{prefix}{i}" for i in range(300)]
        for key in keys:
            client.set(key, key)
        assert all(client.get(key) == key.encode() for key in keys)
        holders = {client.get_node_from_key(key).port for key in keys}
        assert holders == set(redis_cluster.ports)
    finally:
        client.close()
    # Each node answers for itself: state ok, a third of the slots, and its share of the keys.
    held = 0
    for port in redis_cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        try:
            info = node.cluster("info")
            assert info["cluster_state"] == "ok"
            assert info["cluster_known_nodes"] == "3"
            assert info["cluster_slots_assigned"] == "16384"
            mine = [k for k in node.scan_iter(match=f"{prefix}*", count=1000)]
            assert mine, f"node {port} holds none of the keys"
            held += len(mine)
        finally:
            node.close()
    assert held == 300


def test_status_and_a_second_start(redis_cluster: RedisClusterService) -> None:
    where = ("--port", str(redis_cluster.port), "--dir", str(redis_cluster.dir))
    status = script("cluster-status", *where)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("cluster_state:ok") == 3
    again = script("cluster-start", *where)
    assert again.returncode == 0 and "already" in again.stdout


def test_a_lost_node_is_brought_back_and_stop_stops_every_node(
    fresh_redis_cluster: RedisClusterService,
) -> None:
    cluster = fresh_redis_cluster
    where = ("--port", str(cluster.port), "--dir", str(cluster.dir))
    try:
        lost = cluster.ports[1]
        redis.Redis(host="127.0.0.1", port=lost).shutdown(nosave=True)
        down = script("cluster-status", *where)
        assert down.returncode == 1 and f"127.0.0.1:{lost} not answering" in down.stdout
        back = script("cluster-start", *where)
        assert back.returncode == 0, back.stderr
        node = redis.Redis(host="127.0.0.1", port=lost)
        try:
            assert node.cluster("info")["cluster_state"] == "ok"
        finally:
            node.close()
    finally:
        cluster.stop()
    stopped = script("cluster-status", *where)
    assert stopped.returncode == 1
    assert stopped.stdout.count("not answering") == 3


def test_bad_cluster_usage_exits_2() -> None:
    assert script("cluster-start", "--nodes", "2").returncode == 2
    assert script("cluster-start", "--nodes", "three").returncode == 2
    assert script("cluster-status", "--port", "60000").returncode == 2  # bus port > 65535
    assert script("start", "--nodes", "3").returncode == 2
    assert script("cluster-restart").returncode == 2
