"""Health over plain HTTP for kubelets, on the metrics listener: /healthz and /readyz.

A kubelet cannot present the client certificate the gRPC port demands, so the
probes are plain HTTP: liveness (the process and its event loop answer) and
readiness (the server's grpc.health.v1 status). Checked across a MongoDB
outage and across a SIGTERM, while the server drains.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2

from server.app import RunningServer, create_server
from server.backends import open_backends
from server.embedded import EmbeddedMongo
from server.settings import Secret, Settings
from tests.support.clients import client_credentials, health_watch
from tests.support.pki import Pki
from tests.support.processes import free_port, start_replica
from tests.support.waiting import eventually


def probe(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on the metrics listener."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


async def answers(port: int, path: str, status: int) -> bool:
    return (await asyncio.to_thread(probe, port, path))[0] == status


async def test_probes_answer_with_one_word_and_metrics_stay(server: RunningServer) -> None:
    assert await asyncio.to_thread(probe, server.metrics_port, "/healthz") == (200, b"ok\n")
    assert await asyncio.to_thread(probe, server.metrics_port, "/readyz") == (200, b"ok\n")
    status, body = await asyncio.to_thread(probe, server.metrics_port, "/metrics")
    assert status == 200 and b"rpc_server_call_duration_seconds" in body


@pytest.fixture
async def own_mongo_server(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, EmbeddedMongo]]:
    """A server on a MongoDB engine of its own, which the test stops and starts again."""
    engine = EmbeddedMongo(data_dir=None, port=free_port())
    own = replace(
        settings,
        mongodb_uri=Secret(await asyncio.to_thread(engine.start)),
        health_interval_s=0.2,
        data_dir=tmp_path_factory.mktemp("probes"),
    )
    backends = await open_backends(own)
    running = await create_server(own, backends)
    yield running, engine
    await running.stop(0)
    await backends.close()
    await asyncio.to_thread(engine.close)


async def test_readiness_follows_mongodb_and_liveness_does_not(
    own_mongo_server: tuple[RunningServer, EmbeddedMongo],
) -> None:
    running, engine = own_mongo_server
    port = running.metrics_port
    assert await answers(port, "/readyz", 200)
    await asyncio.to_thread(engine.close)  # MongoDB is gone: the whole server is NOT_SERVING
    try:
        await eventually(lambda: answers(port, "/readyz", 503), timeout_s=10, interval_s=0.1)
        assert await asyncio.to_thread(probe, port, "/readyz") == (503, b"unavailable\n")
        assert await answers(port, "/healthz", 200)  # alive: a restart would not help
    finally:
        await asyncio.to_thread(engine.start)  # the same port again, as MongoDB restarted
    await eventually(lambda: answers(port, "/readyz", 200), timeout_s=15, interval_s=0.1)


@pytest.mark.slow
async def test_readiness_fails_at_sigterm_while_the_server_drains(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A health Watch stays open, so the drain lasts the grace period: meanwhile /readyz is
    503 (a load balancer stops sending) and /healthz 200 (the kubelet does not kill it)."""
    metrics_port = free_port()
    replica = start_replica(
        settings,
        pki,
        tmp_path_factory.mktemp("sigterm"),
        MESHGATE_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        MESHGATE_SHUTDOWN_GRACE_S="20",
    )
    try:
        assert await answers(metrics_port, "/readyz", 200)
        async with grpc.aio.secure_channel(replica.target, client_credentials(pki)) as channel:
            watch = health_watch(channel)(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert isinstance(first, health_pb2.HealthCheckResponse)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            replica.process.send_signal(signal.SIGTERM)
            drained = await watch.read()  # the stock servicer tells watchers first
            assert isinstance(drained, health_pb2.HealthCheckResponse)
            assert drained.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await eventually(
                lambda: answers(metrics_port, "/readyz", 503), timeout_s=5, interval_s=0.05
            )
            assert await answers(metrics_port, "/healthz", 200)
            assert replica.process.poll() is None  # still draining: the watch is in flight
            watch.cancel()
        assert await asyncio.to_thread(replica.process.wait, 20) == 0
    finally:
        if replica.process.poll() is None:
            replica.process.kill()
