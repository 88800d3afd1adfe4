"""The work counters (server/workers/metrics.py) count exactly what the workers did.

A server of its own, on a database of its own, so that no other test's tasks or
deliveries move its counters: a known amount of work, then every counter exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from meshgate.v1 import task_service_pb2 as task_pb
from meshgate.v1 import vector_service_pb2 as vec_pb
from meshgate.v1 import webhook_service_pb2 as hook_pb

from server.app import RunningServer, create_server
from server.backends import open_backends
from server.settings import Settings
from tests.support.clients import client_credentials
from tests.support.namespace_clients import Hooks, Tasks, doc
from tests.support.pki import Pki
from tests.support.tenants import Tenant, create_tenant
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver, new_endpoint_path


@pytest.fixture
async def own_server(settings: Settings, pki: Pki) -> AsyncIterator[tuple[RunningServer, Tenant]]:
    """A server whose workers see only this test's work, and a tenant on it."""
    own = replace(settings, mongodb_database=f"{settings.mongodb_database}_metrics")
    backends = await open_backends(own)
    running = await create_server(own, backends)
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{running.port}", client_credentials(pki)
        ) as channel:
            tenant = await create_tenant(
                backends, channel, environment="development", plan="enterprise"
            )
            yield running, tenant
    finally:
        await running.stop(0.5)
        await backends.mongo.database.client.drop_database(own.mongodb_database)
        await backends.close()


async def test_metrics_hooks(own_server: tuple[RunningServer, Tenant], receiver: Receiver) -> None:
    """Two tasks complete and one fails; one endpoint answers 500 once, another 410:
    5 delivery attempts, 2 of them failed, 3 deliveries succeeded, 1 failed, 1 endpoint off."""
    server, tenant = own_server
    metrics = server.work_metrics
    assert set(metrics.counters().values()) == {0} and metrics.task_failure_rate() == 0.0
    ns = await tenant.namespace()
    hooks, tasks = Hooks(tenant, ns.name), Tasks(tenant, ns.name)
    flaky, gone = new_endpoint_path(), new_endpoint_path()
    every = await hooks.create(receiver.url(flaky), ["*"])
    failures_only = await hooks.create(receiver.url(gone), ["task.failed"])
    receiver.endpoint(flaky, every.secret)
    receiver.endpoint(gone, failures_only.secret)
    receiver.script(flaky, 500)  # its first request fails, the retry succeeds
    receiver.script(gone, 410)  # disables that webhook
    submitted = [
        await tasks.submit([doc("a")]),
        await tasks.submit([doc("b")]),
        # points, but the namespace has no vector store: fails before writing anything
        await tasks.submit([doc("c")], [vec_pb.Point(id="p", vector=[1.0, 0.0])]),
    ]
    states = [(await tasks.final(t.task_id)).state for t in submitted]
    assert states == [task_pb.TASK_STATE_COMPLETED] * 2 + [task_pb.TASK_STATE_FAILED]
    await hooks.delivery_in(failures_only.webhook.webhook_id, hook_pb.DELIVERY_STATUS_FAILED)
    await eventually(lambda: receiver.delivered_at_least(flaky, 3), timeout_s=10)

    async def queue_empty() -> bool:  # the counters move before a row is done
        return all(kind["total"] == 0 for kind in (await metrics.queue_depth()).values())

    await eventually(queue_empty, timeout_s=10)
    assert metrics.counters() == {
        "tasks_completed": 2,
        "tasks_failed": 1,
        "tasks_canceled": 0,
        "task_retries": 0,
        "delivery_attempts": 5,
        "delivery_attempt_failures": 2,
        "deliveries_succeeded": 3,
        "deliveries_exhausted": 0,
        "deliveries_failed": 1,
        "endpoints_disabled": 1,
    }
    assert metrics.task_failure_rate() == pytest.approx(1 / 3)
    assert await metrics.queue_depth() == {
        kind: {"due": 0, "total": 0} for kind in ("task", "delivery", "event")
    }
