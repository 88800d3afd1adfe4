"""Running `meshgate serve` as a separate process (a second replica) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.settings import Settings
from tests.conftest import PROCESS_LOGS, Pki, client_credentials, free_port

ROOT = Path(__file__).resolve().parent.parent


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


def replica_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
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
            "MESHGATE_QDRANT_URL": settings.qdrant_url or ":memory:",
            "MESHGATE_INTERNAL_PEERS": ",".join(settings.internal_peers),
            "MESHGATE_SHUTDOWN_GRACE_S": "3",
            "MESHGATE_METRICS_LISTEN": "127.0.0.1:0",
        }
    )
    env.update(extra)
    return env


def start_replica(settings: Settings, pki: Pki, log_dir: Path, **extra: str) -> Replica:
    port = free_port()
    log_path = log_dir / f"replica-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            cwd=ROOT,
            env=replica_env(settings, port, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    replica = Replica(process=process, port=port, log_path=log_path)
    PROCESS_LOGS.append(log_path)
    deadline = time.monotonic() + 60
    channel = grpc.secure_channel(replica.target, client_credentials(pki))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"replica exited early:\n{replica.log()}")
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return replica
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(
                        f"replica did not become healthy:\n{replica.log()}"
                    ) from None
                time.sleep(0.1)
    finally:
        channel.close()
