"""SIGKILL while tasks run and deliveries are in flight: a new replica finishes everything.

Two `meshgate serve` processes, one after the other, on a database of their
own (the in-process test server never sees it), with short leases. The first
is killed with SIGKILL once some tasks are done, some are running and the
receiver is answering a delivery slowly. The second, started on the same
MongoDB and Redis, must bring every task to a final state once, write every
document once (revision 1), and deliver every event at least once; the
receiver deduplicates by webhook-id and sees each task's event exactly once.
"""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from meshgate.v1 import (
    namespace_service_pb2,
    namespace_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

from server.app import create_server
from server.backends import Backends, open_backends
from server.bootstrap import bootstrap
from server.settings import Settings
from tests.support.clients import Metadata, auth, client_credentials
from tests.support.namespace_clients import doc
from tests.support.pki import Pki
from tests.support.processes import Replica, start_replica
from tests.support.tenants import ENV_PROTO
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver

# small: every write of the embedded test engine scans its collection
TASKS = 10
DOCS_PER_TASK = 30


@pytest.fixture
async def crash_db(settings: Settings) -> AsyncIterator[tuple[Settings, Backends]]:
    crash_settings = replace(settings, mongodb_database=f"{settings.mongodb_database}_crash")
    backends = await open_backends(crash_settings, with_qdrant=False)
    yield crash_settings, backends
    await backends.mongo.database.client.drop_database(crash_settings.mongodb_database)
    await backends.close()


def crash_env(settings: Settings) -> dict[str, str]:
    return {
        "MESHGATE_MONGODB_DATABASE": settings.mongodb_database,
        "MESHGATE_TASK_WORKERS": "2",
        "MESHGATE_TASK_LEASE_S": "1",
        "MESHGATE_WORK_POLL_S": "0.1",
        "MESHGATE_WEBHOOK_WORKERS": "4",
        "MESHGATE_WEBHOOK_TIMEOUT_S": "1",
        "MESHGATE_WEBHOOK_RETRY_SCHEDULE": "100ms,200ms,300ms,500ms,1s,1s,1s",
        "MESHGATE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "MESHGATE_WEBHOOK_SECRET_KEY": base64.b64encode(b"c" * 32).decode(),
        "MESHGATE_LOG_LEVEL": "WARNING",
    }


async def states(
    stub: task_service_pb2_grpc.TaskServiceAsyncStub, md: Metadata
) -> collections.Counter[int]:
    page = await stub.ListTasks(task_service_pb2.ListTasksRequest(page_size=200), metadata=md)
    return collections.Counter(t.state for t in page.tasks)


@pytest.mark.slow
async def test_sigkill_mid_flight_then_a_new_replica_finishes_exactly_once(
    crash_db: tuple[Settings, Backends], pki: Pki, tmp_path: Path
) -> None:
    settings, backends = crash_db
    boot = await bootstrap(backends, name="crash", plan="free", environment="development")
    env = crash_env(settings)
    receiver = Receiver().start()
    replicas: list[Replica] = []  # killed at the end if still running
    first = start_replica(settings, pki, tmp_path, **env)
    replicas.append(first)
    try:
        async with grpc.aio.secure_channel(first.target, client_credentials(pki)) as channel:
            ns = (
                await namespace_service_pb2_grpc.NamespaceServiceStub(channel).CreateNamespace(
                    namespace_service_pb2.CreateNamespaceRequest(
                        name="crash", environment=ENV_PROTO["development"]
                    ),
                    metadata=auth(boot.secret),
                )
            ).namespace
            md = auth(boot.secret, ns.name)
            created = await webhook_service_pb2_grpc.WebhookServiceStub(channel).CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(
                    webhook=webhook_service_pb2.Webhook(
                        url=receiver.url("/crash"), event_types=["*"]
                    )
                ),
                metadata=md,
            )
            endpoint = receiver.endpoint("/crash", created.secret)
            endpoint.delay_s = 0.4  # slow answers: deliveries are in flight when the kill comes
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            submitted = [
                (
                    await tasks.SubmitIngestion(
                        task_service_pb2.SubmitIngestionRequest(
                            documents=[
                                doc(f"t{k}-d{i}", body={"i": i}) for i in range(DOCS_PER_TASK)
                            ]
                        ),
                        metadata=md,
                    )
                ).task.task_id
                for k in range(TASKS)
            ]

            async def mid_flight() -> bool:
                counts = await states(tasks, md)
                return (
                    counts[task_service_pb2.TASK_STATE_COMPLETED] >= 2
                    and counts[task_service_pb2.TASK_STATE_IN_PROGRESS] >= 1
                    and receiver.in_flight >= 1
                )

            await eventually(mid_flight, timeout_s=30, interval_s=0.01)
            at_kill = await states(tasks, md)
        first.process.kill()  # SIGKILL: no drain, no lease released
        first.process.wait(timeout=10)
        killed_at = time.monotonic()
        second = start_replica(settings, pki, tmp_path, **env)
        replicas.append(second)
        async with grpc.aio.secure_channel(second.target, client_credentials(pki)) as channel:
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)

            async def all_final() -> bool:
                counts = await states(tasks, md)
                return counts[task_service_pb2.TASK_STATE_COMPLETED] == TASKS

            await eventually(all_final, timeout_s=60, interval_s=0.1)
            finished_after = time.monotonic() - killed_at
            final = [
                (await tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=t), metadata=md)).task
                for t in submitted
            ]
        assert all(t.items_done == DOCS_PER_TASK for t in final)
        assert max(t.attempts for t in final) >= 2  # at least one task was taken over
        # every document written once in effect: one per id, none rewritten by a replay
        documents = backends.mongo.database["documents"]
        assert (
            await documents.count_documents({"namespace_id": ns.namespace_id})
            == TASKS * DOCS_PER_TASK
        )
        assert (
            await documents.count_documents(
                {"namespace_id": ns.namespace_id, "revision": {"$ne": 1}}
            )
            == 0
        )

        async def every_event_delivered() -> bool:
            return len(receiver.delivered("/crash")) >= TASKS

        await eventually(every_event_delivered, timeout_s=30, interval_s=0.05)
        requests = receiver.requests("/crash")
        assert all(r.valid for r in requests)
        delivered = receiver.delivered("/crash")
        per_task = collections.defaultdict(set)
        for webhook_id, request in delivered.items():
            assert request.payload["type"] == "task.completed"
            per_task[request.payload["data"]["task_id"]].add(webhook_id)
        assert set(per_task) == set(submitted)
        assert all(len(ids) == 1 for ids in per_task.values())  # one event per task, ever
        print(
            f"crash test: at SIGKILL {dict(at_kill)} (state -> count),"
            f" all {TASKS} tasks final {finished_after:.1f}s after the kill,"
            f" max attempts {max(t.attempts for t in final)},"
            f" {len(requests)} requests for {len(delivered)} events"
            f" ({len(requests) - len(delivered)} duplicates deduplicated by webhook-id)"
        )
        assert second.process.poll() is None
    finally:
        receiver.stop()
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait(timeout=10)


async def test_a_stopping_server_hands_its_running_task_back(settings: Settings, pki: Pki) -> None:
    """SIGTERM (RunningServer.stop): the claimed task is due again at once, not after its lease."""
    quiet = replace(settings, mongodb_database=f"{settings.mongodb_database}_stop", task_workers=1)
    backends = await open_backends(quiet)
    try:
        boot = await bootstrap(backends, name="stop", plan="free", environment="development")
        running = await create_server(quiet, backends, address="127.0.0.1:0")
        async with grpc.aio.secure_channel(
            f"localhost:{running.port}", client_credentials(pki)
        ) as channel:
            ns = (
                await namespace_service_pb2_grpc.NamespaceServiceStub(channel).CreateNamespace(
                    namespace_service_pb2.CreateNamespaceRequest(
                        name="stop", environment=ENV_PROTO["development"]
                    ),
                    metadata=auth(boot.secret),
                )
            ).namespace
            md = auth(boot.secret, ns.name)
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            task = (
                await tasks.SubmitIngestion(
                    task_service_pb2.SubmitIngestionRequest(
                        documents=[doc(f"s{i}") for i in range(400)]
                    ),
                    metadata=md,
                )
            ).task

            async def running_now() -> bool:
                got = await tasks.GetTask(
                    task_service_pb2.GetTaskRequest(task_id=task.task_id), metadata=md
                )
                return got.task.state == task_service_pb2.TASK_STATE_IN_PROGRESS

            await eventually(running_now, timeout_s=10, interval_s=0.01)
        await running.stop(0.5)
        row = await backends.mongo.work_queue.find_one({"ref": task.task_id})
        assert row is not None and row["token"] is None
        assert row["due_at"] <= datetime.now(UTC)  # not 30 s (the lease) from now
        restarted = await create_server(quiet, backends, address="127.0.0.1:0")
        try:
            async with grpc.aio.secure_channel(
                f"localhost:{restarted.port}", client_credentials(pki)
            ) as channel:
                tasks = task_service_pb2_grpc.TaskServiceStub(channel)

                async def completed() -> bool:
                    got = await tasks.GetTask(
                        task_service_pb2.GetTaskRequest(task_id=task.task_id), metadata=md
                    )
                    return got.task.state == task_service_pb2.TASK_STATE_COMPLETED

                await eventually(completed, timeout_s=30)
                final = (
                    await tasks.GetTask(
                        task_service_pb2.GetTaskRequest(task_id=task.task_id), metadata=md
                    )
                ).task
            assert final.attempts == 2 and final.items_done == 400
        finally:
            await restarted.stop(0.5)
    finally:
        await backends.mongo.database.client.drop_database(quiet.mongodb_database)
        await backends.close()
