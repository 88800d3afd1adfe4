"""Fail fast while MongoDB is down, recover within a second of its return, and refuse
nothing while it is up, however busy the host.

A server of its own on a MongoDB engine running as a process of its own, under a
steady load of GetDocument calls. The engine is stopped for 5 s and started again
(same port, same data): during the outage calls are refused UNAVAILABLE within
milliseconds with a retry delay (before: each waited ~5.5 s for the driver's timeouts),
and calls succeed again soon after the engine is back, with no restart.

On a saturated host the driver misses heartbeats although MongoDB is up: it clears
its connection pool and cancels the calls in flight. That is a hint for the breaker,
never an outage (storage/backends/breaker.py): no call is refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import document_service_pb2_grpc as doc_grpc
from meshgate.v1 import task_service_pb2 as task_pb
from meshgate.v1 import task_service_pb2_grpc as task_grpc

from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.settings import Secret, Settings
from tests.support.clients import auth, client_credentials, trailers_of
from tests.support.error_details import details_of
from tests.support.load import Load, burn_cpu, busy_cores
from tests.support.namespace_clients import doc
from tests.support.pki import Pki
from tests.support.processes import MongoEngine
from tests.support.tenants import create_tenant

OUTAGE_S = 5.0
BACKEND_TIMEOUT_S = 5.0  # MESHGATE_BACKEND_TIMEOUT_S of the server (the default)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[MongoEngine]:
    started = MongoEngine.on_free_port(tmp_path)
    await asyncio.to_thread(started.start)
    yield started
    await asyncio.to_thread(started.stop)


@pytest.fixture
async def own_server(
    settings: Settings, engine: MongoEngine
) -> AsyncIterator[tuple[RunningServer, Backends]]:
    own = replace(settings, mongodb_uri=Secret(engine.uri), mongodb_database="availability")
    backends = await open_backends(own)
    running = await create_server(own, backends)
    yield running, backends
    await running.stop(1.0)
    await backends.close()


@pytest.mark.slow
async def test_calls_fail_fast_while_mongodb_is_down_and_recover_when_it_returns(
    own_server: tuple[RunningServer, Backends], engine: MongoEngine, pki: Pki
) -> None:
    running, backends = own_server
    async with grpc.aio.secure_channel(
        f"localhost:{running.port}", client_credentials(pki)
    ) as channel:
        tenant = await create_tenant(
            backends, channel, environment="development", plan="enterprise"
        )
        namespace = await tenant.namespace()
        stub = doc_grpc.DocumentServiceStub(channel)
        md = auth(tenant.admin, namespace.namespace_id)
        await stub.CreateDocument(doc_pb.CreateDocumentRequest(document=doc("d1")), metadata=md)
        refusals: list[grpc.aio.AioRpcError] = []

        async def get(_: int) -> None:
            try:
                await stub.GetDocument(
                    doc_pb.GetDocumentRequest(document_id="d1"), metadata=md, timeout=10
                )
            except grpc.aio.AioRpcError as error:
                refusals.append(error)
                raise

        load = Load(call=get, workers=4, pause_s=0.01)
        load.start()
        await asyncio.sleep(1.0)
        down = time.monotonic()
        await asyncio.to_thread(engine.stop)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(engine.start)
        back = time.monotonic()
        await asyncio.sleep(3.0)
        await load.stop()

    before, outage = load.window(0, down), load.window(down, back)
    recovered = load.recovered_at(back)
    # calls already waiting on MongoDB when it went away wait for the driver (one per worker
    # at most); every call a worker made after the breaker refused one is refused at once
    waiting, refused = load.split_at_first(down, back, details="retry in")
    opened = min((s.started for s in refused.samples), default=back)
    print(
        f"\nMongoDB down {back - down:.1f}s: {dict(outage.codes)}, p99"
        f" {outage.p99_s() * 1000:.1f} ms, slowest {outage.slowest_s() * 1000:.0f} ms;"
        f" after the first refusals ({(opened - down) * 1000:.0f} ms in): p99"
        f" {refused.p99_s() * 1000:.1f} ms; before it: {len(waiting.samples)} calls, slowest"
        f" {waiting.slowest_s() * 1000:.0f} ms;"
        f" calls OK again {((recovered or back) - back) * 1000:.0f} ms after it accepted"
        f" connections (before the outage: {dict(before.codes)}, p99"
        f" {before.p99_s() * 1000:.1f} ms)"
    )
    assert set(before.codes) == {"OK"}
    assert outage.codes["UNAVAILABLE"] > 100
    assert set(outage.codes) <= {"OK", "UNAVAILABLE"}
    assert len([s for s in waiting.samples if s.seconds > 0.25]) <= load.workers
    assert waiting.slowest_s() < BACKEND_TIMEOUT_S + 1.5
    assert refused.p99_s() < 0.25  # before: ~5.5 s, the driver's timeouts
    assert recovered is not None and recovered - back < 1.5
    fast = [
        e
        for e in refusals
        if e.code() == grpc.StatusCode.UNAVAILABLE and "retry in" in (e.details() or "")
    ]
    assert fast, "no refusal came from the breaker"
    for error in fast:
        assert "request id" in (error.details() or "")
        assert dict(trailers_of(error))["retry-after"] == "1"
        details = details_of(trailers_of(error))
        assert details.reason == "STORE_UNAVAILABLE" and details.retry_info is not None


# The driver's deadlines on the saturated host (MESHGATE_BACKEND_TIMEOUT_S; a heartbeat's
# answer may come this late) and how often it checks MongoDB: a tenth of the defaults, so
# that a CPU spike of twice the deadline makes it miss a heartbeat within seconds, as a
# spike of over 5 s does with the defaults.
BUSY_TIMEOUT_S = 1.0
HEARTBEAT_MS = 500
SPIKE_S = 2.0


def _with_option(uri: str, option: str) -> str:
    parts = urlsplit(uri)
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(path=parts.path or "/", query=query))


@pytest.fixture
async def busy_server(
    settings: Settings, mongo_uri: str
) -> AsyncIterator[tuple[RunningServer, Backends]]:
    """A server of its own on the session's MongoDB, with the driver's deadlines above."""
    own = replace(
        settings,
        backend_timeout_s=BUSY_TIMEOUT_S,
        mongodb_uri=Secret(_with_option(mongo_uri, f"heartbeatFrequencyMS={HEARTBEAT_MS}")),
        mongodb_database=f"{settings.mongodb_database}_busy",
    )
    backends = await open_backends(own)
    running = await create_server(own, backends)
    yield running, backends
    await running.stop(1.0)
    await backends.mongo.database.client.drop_database(own.mongodb_database)
    await backends.close()


@pytest.mark.slow
async def test_no_call_is_refused_while_mongodb_is_up_on_a_saturated_host(
    busy_server: tuple[RunningServer, Backends], pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    running, backends = busy_server
    caplog.set_level(logging.WARNING, logger="meshgate.health")
    async with grpc.aio.secure_channel(
        f"localhost:{running.port}", client_credentials(pki)
    ) as channel:
        tenant = await create_tenant(
            backends, channel, environment="development", plan="enterprise"
        )
        namespace = await tenant.namespace()
        tasks = task_grpc.TaskServiceStub(channel)
        md = auth(tenant.admin, namespace.namespace_id)

        failures: list[str] = []

        async def list_tasks(_: int) -> None:  # reads MongoDB; no credits, no other store
            try:
                await tasks.ListTasks(task_pb.ListTasksRequest(), metadata=md, timeout=10)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
                raise

        load = Load(call=list_tasks, workers=4, pause_s=0.01)
        with busy_cores(2):
            load.start()
            await asyncio.sleep(1.0)
            for _ in range(2):
                burn_cpu(SPIKE_S)  # the server's own process, on top of the busy cores
                await asyncio.sleep(1.0)
            await load.stop()

    calls = load.window(0, math.inf)
    breaker = running.components.breakers["mongodb"]
    hints = [r.getMessage() for r in caplog.records if "may be unreachable" in r.getMessage()]
    print(
        f"\nsaturated host, {len(calls.samples)} calls: {dict(calls.codes)}, slowest"
        f" {calls.slowest_s():.2f} s; breaker opened {breaker.opened}"
        f" times; hints: {hints}; failures: {failures}"
    )
    assert dict(calls.codes) == {"OK": len(calls.samples)}  # before: UNAVAILABLE, refused
    assert breaker.opened == 0
    # and the spikes did what they are for: the driver missed a heartbeat (then it clears its
    # pool and cancels the calls in flight), a hint the breaker probed
    assert any("heartbeat: NetworkTimeout" in hint for hint in hints), hints
