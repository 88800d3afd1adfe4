"""The task store over the wire, in a database no server works on: items, lifecycle, fencing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage.backends.mongo import MongoStore
from storage.backends.work_queue import WorkQueue
from storage.data.tasks import DocumentItem, PointItem, TaskStore, pack_vector, unpack_vector
from tests.support.tenants import random_scope

LEASE = timedelta(seconds=30)


def test_vectors_pack_as_float32() -> None:
    values = [0.5, -1.25, 3.0e-8, 1e30]
    packed = pack_vector(values)
    assert len(packed) == 16
    assert unpack_vector(packed) == pytest.approx(values, rel=1e-6)


async def test_task_lifecycle_and_fencing(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    tasks = TaskStore(mongo=quiet_mongo, queue=queue)
    s = random_scope()
    record = await tasks.submit(
        s,
        documents=[DocumentItem("d1", {"a": 1}, {"k": "v"})],
        points=[PointItem("p1", [0.25, 0.5], {})],
    )
    assert record.state == "pending" and record.items_total == 2
    claim = await queue.claim("task", lease=LEASE)
    assert claim is not None and claim.ref == record.task_id
    run = await tasks.begin(s, record.task_id, token=claim.token)
    assert run is not None and run.record.state == "in_progress" and run.record.attempts == 1
    assert run.documents[0].body == {"a": 1} and run.points[0].vector == [0.25, 0.5]
    # another worker takes over after the lease: the first one is fenced out
    later = await tasks.begin(s, record.task_id, token="other-token")
    assert later is not None and later.record.attempts == 2
    assert await tasks.progress(s, record.task_id, token=claim.token, done=1) == "lost"
    assert (
        await tasks.finish(
            s, run.record, token=claim.token, state="completed", items_done=2, error=None
        )
        is None
    )
    assert await tasks.progress(s, record.task_id, token="other-token", done=1) == "ok"
    event = await tasks.finish(
        s, later.record, token="other-token", state="completed", items_done=2, error=None
    )
    assert event is not None and event.event_type == "task.completed"
    # a crash before the event was handed over: the next claimer gets it back
    again = await tasks.begin(s, record.task_id, token="third")
    assert again is not None and again.record.state == "completed"
    assert again.final_event == event  # handed to the outbox again: idempotent
    # the items are gone with the final state
    raw = await quiet_mongo.scoped("tasks", s).find_one({"task_id": record.task_id})
    assert raw is not None and "items" not in raw
    await queue.purge_namespace(s.namespace_id)


async def test_cancel_pending_embeds_the_event(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    tasks = TaskStore(mongo=quiet_mongo, queue=queue)
    s = random_scope()
    record = await tasks.submit(s, documents=[DocumentItem("d1", {}, {})], points=[])
    canceled = await tasks.cancel(s, record.task_id)
    assert canceled.state == "canceled" and canceled.finished_at is not None
    claim = await queue.claim("task", lease=LEASE)
    assert claim is not None
    run = await tasks.begin(s, record.task_id, token=claim.token)
    assert run is not None and run.final_event is not None
    assert run.final_event.event_type == "task.canceled"
    await queue.purge_namespace(s.namespace_id)
