"""Processes the suite starts: a real redis-server, `meshgate serve` replicas.

A replica is a second server process on the session's MongoDB and Redis (or
on settings of its own); its log goes to a file that the session's log check
searches too (log_guard.PROCESS_LOGS).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2

from server.embedded import EmbeddedMongo
from server.settings import Settings
from tests.support.cli import ROOT, start_cli
from tests.support.clients import client_credentials, health_check_sync
from tests.support.driver_sockets import register_mongodb
from tests.support.log_guard import PROCESS_LOGS
from tests.support.pki import Pki
from tests.support.waiting import wait_until

__all__ = [
    "ROOT",
    "MongoEngine",
    "RedisServer",
    "Replica",
    "free_port",
    "redis_server_binary",
    "replica_env",
    "start_replica",
    "start_replicas",
    "wait_until_healthy",
]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """MESHGATE_TEST_REDIS_SERVER, else `redis-server` on the PATH."""
    return os.environ.get("MESHGATE_TEST_REDIS_SERVER") or shutil.which("redis-server")


@dataclass
class RedisServer:
    """A redis-server on a loopback port; stop (or kill) and start it again to simulate
    an outage. Without persistence by default; with `appendonly`, every write is in the
    append-only file before it is acknowledged (a SIGKILL loses nothing). `DEBUG` is
    allowed from loopback (`DEBUG SLEEP` makes a slow Redis)."""

    binary: str
    port: int
    workdir: Path
    appendonly: bool = False
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_free_port(cls, workdir: Path, *, appendonly: bool = False) -> RedisServer:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(
                "redis-server not found: run the tests through `make test` (installs it as"
                " root) or install Debian's redis-server package"
            )
        return cls(binary=binary, port=free_port(), workdir=workdir, appendonly=appendonly)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--enable-debug-command",
                "local",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(answers, timeout_s=10, failure=lambda: "redis-server did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown save; without persistence the data is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class MongoEngine:
    """The embedded MongoDB engine (a process of its own, as `serve --dev` runs it) on a fixed
    loopback port, with its data in `data_dir` and its output in `log_path`: `stop` (a clean
    shutdown) and `start` again to simulate an outage that loses nothing."""

    port: int
    data_dir: Path
    log_path: Path
    engine: EmbeddedMongo | None = None

    @classmethod
    def on_free_port(cls, workdir: Path) -> MongoEngine:
        return cls(port=free_port(), data_dir=workdir / "mongo", log_path=workdir / "mongo.log")

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        engine = EmbeddedMongo(data_dir=self.data_dir, port=self.port, output=self.log_path)
        engine.start()
        register_mongodb(self.port)  # tests/support/driver_sockets.py
        self.engine = engine

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def wait_until_healthy(
    target: str, pki: Pki, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60
) -> None:
    """Until the gRPC health check of a started server answers; RuntimeError with the
    server's log if it exits or stays silent (and then it is killed)."""
    with grpc.secure_channel(target, client_credentials(pki)) as channel:
        check = health_check_sync(channel)

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{target} exited early:\n{log.read_text(errors='replace')}")
            try:
                check(health_pb2.HealthCheckRequest(), timeout=1)
                return True
            except grpc.RpcError:
                return False

        def never_healthy() -> str:
            process.kill()
            return f"{target} did not become healthy:\n{log.read_text(errors='replace')}"

        wait_until(serving, timeout_s=timeout_s, interval_s=0.1, failure=never_healthy)


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def stop_replicas(replicas: list[Replica], timeout_s: float = 15.0) -> None:
    """SIGTERM to every replica still running, then SIGKILL to any not stopped within
    `timeout_s`: a teardown leaves no process behind, whatever one of them does (seen on
    an overloaded machine: one replica slow to stop, and the others, never signalled, ran
    on for the rest of the session)."""
    running = [r for r in replicas if r.process.poll() is None]
    for replica in running:
        replica.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for replica in running:
        try:
            replica.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait(timeout=10)


def replica_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    """The environment of `meshgate serve` for `settings` on `port`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    assert settings.mongodb_uri is not None and settings.redis_url is not None
    env.update(
        {
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
            "MESHGATE_LISTEN": f"127.0.0.1:{port}",
            "MESHGATE_DATA_DIR": str(settings.data_dir),
            "MESHGATE_TLS_CERT": str(settings.tls_cert),
            "MESHGATE_TLS_KEY": str(settings.tls_key),
            "MESHGATE_TLS_CLIENT_CA": str(settings.tls_client_ca),
            "MESHGATE_MONGODB_URI": settings.mongodb_uri.reveal(),
            "MESHGATE_MONGODB_DATABASE": settings.mongodb_database,
            "MESHGATE_REDIS_URL": settings.redis_url.reveal(),
            "MESHGATE_REDIS_CLUSTER": str(settings.redis_cluster).lower(),
            "MESHGATE_QDRANT_URL": settings.qdrant_url or ":memory:",
            "MESHGATE_INTERNAL_PEERS": ",".join(settings.internal_peers),
            "MESHGATE_SHUTDOWN_GRACE_S": "3",
            "MESHGATE_DRAIN_DELAY_S": "0",
            "MESHGATE_METRICS_LISTEN": "127.0.0.1:0",
        }
    )
    env.update(extra)
    return env


def start_replica(settings: Settings, pki: Pki, log_dir: Path, **extra: str) -> Replica:
    """`meshgate serve` on a free port, returned once its health check answers."""
    port = free_port()
    log_path = log_dir / f"replica-{port}.log"
    process = start_cli("serve", env=replica_env(settings, port, **extra), log_path=log_path)
    replica = Replica(process=process, port=port, log_path=log_path)
    PROCESS_LOGS.append(log_path)
    # generous: on a loaded machine the imports alone can take tens of seconds
    wait_until_healthy(replica.target, pki, process, log_path, timeout_s=120)
    return replica


def start_replicas(
    count: int, settings: Settings, pki: Pki, log_dir: Path, **extra: str
) -> list[Replica]:
    """`count` replicas started at the same moment; if one does not come up, the others are
    killed before the error is raised (no process outlives its test)."""
    with ThreadPoolExecutor(count) as pool:
        futures = [
            pool.submit(start_replica, settings, pki, log_dir, **extra) for _ in range(count)
        ]
    started = [f.result() for f in futures if f.exception() is None]
    failures = [error for f in futures if (error := f.exception()) is not None]
    if failures:
        for replica in started:
            replica.process.kill()
            replica.process.wait(timeout=10)
        raise failures[0]
    return started
