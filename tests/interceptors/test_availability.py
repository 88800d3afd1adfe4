"""Fail fast while MongoDB is down, and recover within a second of its return.

A server of its own on a MongoDB engine running as a process of its own, under a
steady load of GetDocument calls. The engine is stopped for 5 s and started again
(same port, same data): during the outage calls are refused UNAVAILABLE within
milliseconds with a retry delay (before: each waited ~5.5 s for the driver's timeouts),
and calls succeed again soon after the engine is back, with no restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import document_service_pb2_grpc as doc_grpc

from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.settings import Secret, Settings
from tests.support.clients import auth, client_credentials, trailers_of
from tests.support.error_details import details_of
from tests.support.load import Load
from tests.support.namespace_clients import doc
from tests.support.pki import Pki
from tests.support.processes import MongoEngine
from tests.support.tenants import create_tenant

# timing under load: one rerun (docs/testing.md#timing-sensitive-tests)
pytestmark = pytest.mark.flaky(reruns=1, reruns_delay=2)

OUTAGE_S = 5.0


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
    print(
        f"\nMongoDB down {back - down:.1f}s: {dict(outage.codes)}, p99"
        f" {outage.p99_s() * 1000:.1f} ms, slowest {outage.slowest_s() * 1000:.0f} ms;"
        f" calls OK again {((recovered or back) - back) * 1000:.0f} ms after it accepted"
        f" connections (before the outage: {dict(before.codes)}, p99"
        f" {before.p99_s() * 1000:.1f} ms)"
    )
    assert set(before.codes) == {"OK"}
    assert outage.codes["UNAVAILABLE"] > 100
    assert set(outage.codes) <= {"OK", "UNAVAILABLE"}
    assert outage.p99_s() < 0.25  # before: ~5.5 s, the driver's timeouts
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
