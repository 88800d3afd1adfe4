"""Webhook receivers that hang or reset connections, while ingestion tasks complete and
fire `task.completed`: the API and the tasks carry on, the attempts fail within the
webhook timeout and are retried, and once the receiver answers again every event is
delivered, without restarting anything."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import pytest
from meshgate.v1 import task_service_pb2 as task_pb
from meshgate.v1 import webhook_service_pb2 as hook_pb

from tests.support.faults import ALLOWANCE, FaultRow, Traffic
from tests.support.faulty_receiver import FaultyReceiver
from tests.support.namespace_clients import Hooks, Tasks, doc
from tests.support.tenants import Tenant
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

TASKS = 3


@pytest.mark.parametrize("mode", ["hang", "reset"])
async def test_a_misbehaving_webhook_receiver(
    mode: Literal["hang", "reset"], traffic: Traffic, fault_rows: list[FaultRow]
) -> None:
    receiver = FaultyReceiver(mode).start()
    try:
        tenant = Tenant("", "", traffic.docs_secret, traffic.channels[0])
        hooks = Hooks(tenant, traffic.docs_namespace)
        created = await hooks.create(receiver.url, ["task.completed"])
        webhook_id = created.webhook.webhook_id
        tasks = Tasks(tenant, traffic.docs_namespace)
        traffic.start()
        await asyncio.sleep(1.0)
        faulty = time.monotonic()
        submitted = [await tasks.submit([doc(f"task-{mode}-{i}")]) for i in range(TASKS)]
        for task in submitted:  # the tasks complete whatever the receiver does
            assert (await tasks.final(task.task_id)).state == task_pb.TASK_STATE_COMPLETED
        await asyncio.sleep(1.5)  # attempts fail and are retried meanwhile
        assert receiver.connections[mode] >= TASKS
        assert await hooks.deliveries(webhook_id, hook_pb.DELIVERY_STATUS_SUCCEEDED) == []
        receiver.mode = "ok"
        healthy = time.monotonic()

        async def all_delivered() -> bool:
            done = await hooks.deliveries(webhook_id, hook_pb.DELIVERY_STATUS_SUCCEEDED)
            return len(done) == TASKS

        delivered_after = await eventually(all_delivered, timeout_s=8.0, interval_s=0.05)
        await traffic.stop()
    finally:
        receiver.stop()

    before, during = traffic.documents.window(0, faulty), traffic.documents.window(faulty, healthy)
    admitted = traffic.admitted()
    fault_rows.append(
        FaultRow(
            f"webhook receiver that {'hangs' if mode == 'hang' else 'resets connections'}",
            during,
            delivered_after,
            admitted,
            ALLOWANCE,
            note=f"{receiver.connections[mode]} failed attempts; recovery: every event delivered",
        )
    )
    assert set(during.codes) == {"OK"}, during.codes  # the API does not notice
    # nor is it slowed: an effect of the receiver would come back with each of its failed
    # attempts, while a stall of the host (or of the MongoDB engine all replicas share)
    # delays only the calls in flight at that instant, one per worker (seen on a loaded
    # machine: calls on all three replicas answered together after 1.3-1.9 s)
    slowed = [s for s in during.samples if s.seconds > 1.0 + 2 * before.p99_s()]
    assert len(slowed) <= len(traffic.replicas), slowed
    assert await traffic.unreadable(0) == set()
    assert admitted <= ALLOWANCE
