"""A real Redis Cluster on loopback from Debian's `redis-server`, for the cluster tests.

Three primaries, each with one replica (`replicas_per_primary=0` for none),
created with `redis-cli --cluster create`, without persistence. Failure is
detected fast (`cluster-node-timeout` 1000 ms, where production keeps the
default 15 s), and a replica may always take over (`cluster-replica-validity-factor 0`)
and syncs at once (`repl-diskless-sync-delay 0`), so a killed primary is replaced
in about two seconds.

A test that kills nodes calls `restore()` at its end: the killed nodes start
again from their `nodes.conf`, rejoin (a replaced primary as a replica), and
the cluster is back to every primary with a synced replica.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from server.backends import open_redis
from storage.backends.redis_client import RedisClient, ping
from tests.support.processes import free_port, redis_server_binary
from tests.support.waiting import wait_until

__all__ = ["LocalRedisCluster", "RedisEndpoint"]


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """Where the tests' Redis is: one node, or a node of a cluster."""

    url: str
    cluster: bool

    @property
    def name(self) -> str:
        return "cluster" if self.cluster else "single"

    async def connect(self, timeout_s: float = 5.0) -> RedisClient:
        """A client as the server opens it, after its first health probe: a cluster client
        has read the slot map and command table (slower than a script's timeout)."""
        client = open_redis(self.url, cluster=self.cluster, timeout_s=timeout_s)
        await ping(client)
        return client

    def env(self) -> dict[str, str]:
        """The settings of a `meshgate serve` process on this Redis."""
        return {"MESHGATE_REDIS_URL": self.url, "MESHGATE_REDIS_CLUSTER": str(self.cluster)}


@dataclass
class _Node:
    port: int
    bus_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2)

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return dict(client.info(section))


@dataclass
class LocalRedisCluster:
    binary: str
    cli: str
    workdir: Path
    primaries: int = 3
    replicas_per_primary: int = 1
    nodes: list[_Node] = field(default_factory=list)

    @classmethod
    def in_directory(cls, workdir: Path, *, replicas_per_primary: int = 1) -> LocalRedisCluster:
        binary = redis_server_binary()
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError(
                "redis-server and redis-cli are needed: run the tests through `make test`"
                " (installs them as root) or install Debian's redis-server package"
            )
        return cls(
            binary=binary, cli=cli, workdir=workdir, replicas_per_primary=replicas_per_primary
        )

    @property
    def endpoint(self) -> RedisEndpoint:
        return RedisEndpoint(url=f"redis://127.0.0.1:{self.nodes[0].port}/0", cluster=True)

    def _spawn(self, node: _Node) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        node.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(node.port),
                "--cluster-port",
                str(node.bus_port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                with node.client() as client:
                    return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, timeout_s=10, failure=lambda: f"redis node {node.port} did not start")

    def start(self) -> None:
        count = self.primaries * (1 + self.replicas_per_primary)
        self.nodes = [
            _Node(port=free_port(), bus_port=free_port(), workdir=self.workdir / f"node-{i}")
            for i in range(count)
        ]
        for node in self.nodes:
            self._spawn(node)
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas_per_primary),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_healthy()

    def live(self) -> list[_Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Until every live node says cluster_state:ok, and every replica has synced."""

        def healthy() -> bool:
            try:
                for node in self.live():
                    with node.client() as client:
                        if client.cluster("INFO").get("cluster_state") != "ok":
                            return False
                    replication = node.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                        or replication.get("master_sync_in_progress")
                    ):
                        return False
            except redis.RedisError:
                return False
            return True

        wait_until(healthy, timeout_s=timeout_s, interval_s=0.1, failure=self._state)

    def _state(self) -> str:
        with self.live()[0].client() as client:
            nodes = client.execute_command("CLUSTER NODES")
        return f"the Redis cluster did not become healthy:\n{nodes}"

    def primary_of(self, key: str) -> _Node:
        """The live node serving `key`'s slot as primary now."""
        with SyncRedisCluster(host="127.0.0.1", port=self.live()[0].port) as cluster:
            port = int(cluster.get_node_from_key(key).port)
        return next(n for n in self.nodes if n.port == port)

    def kill(self, node: _Node) -> None:
        """SIGKILL: the node vanishes mid-write, as a crashed machine would."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def restore(self) -> None:
        """Restart every killed node and wait for the cluster to be whole again."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                self._spawn(node)
        self.wait_healthy(timeout_s=60)

    def stop(self) -> None:
        for node in self.live():
            assert node.process is not None
            node.process.terminate()
            node.process.wait(timeout=10)
