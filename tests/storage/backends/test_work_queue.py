"""The work queue and the task store over the wire, in a database no server works on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.backends.work_queue import WorkQueue
from storage.core.clock import utc_now
from storage.core.errors import FailedPreconditionError
from storage.core.ids import new_internal_id, new_namespace_id
from storage.data.documents import DocumentStore
from storage.data.tasks import DocumentItem, PointItem, TaskStore, pack_vector, unpack_vector
from storage.webhooks.outbox import EventOutbox
from storage.webhooks.sealing import SecretBox
from storage.webhooks.store import DeliveryStore, WebhookStore

LEASE = timedelta(seconds=30)


@pytest.fixture(scope="module")
async def quiet_mongo(mongo_uri: str, database_name: str) -> AsyncIterator[MongoStore]:
    """The same MongoDB, another database: the test server's workers never claim from it."""
    store = MongoStore(uri=mongo_uri, database=f"{database_name}_quiet")
    await store.ensure_indexes()
    yield store
    await store.database.client.drop_database(f"{database_name}_quiet")
    await store.close()


def scope() -> Scope:
    return Scope(internal_id=new_internal_id(), namespace_id=new_namespace_id())


async def test_claims_are_exclusive_leased_and_fenced(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    s = scope()
    await queue.schedule("delivery", s, "dlv-a", due=utc_now())
    first = await queue.claim("delivery", lease=LEASE)
    assert first is not None and first.ref == "dlv-a" and first.scope == s
    assert await queue.claim("delivery", lease=LEASE) is None  # leased: nobody else gets it
    # the lease runs out (a dead worker): the row is claimed again, with a new token
    await quiet_mongo.work_queue.update_one(
        {"_id": "delivery:dlv-a"}, {"$set": {"due_at": utc_now() - timedelta(seconds=1)}}
    )
    second = await queue.claim("delivery", lease=LEASE)
    assert second is not None and second.token != first.token
    # the first holder is fenced out of everything
    assert not await queue.renew(first, lease=LEASE)
    await queue.done(first)
    await queue.retry_at(first, utc_now())
    assert await queue.claim("delivery", lease=LEASE) is None
    assert await queue.renew(second, lease=LEASE)
    await queue.done(second)
    assert await quiet_mongo.work_queue.count_documents({"ref": "dlv-a"}) == 0


async def test_reserved_rows_wait_for_release(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    s = scope()
    await queue.reserve("event", s, "evt-a")
    assert await queue.claim("event", lease=LEASE) is None  # not due before the grace period
    await queue.release("event", "evt-a")
    claim = await queue.claim("event", lease=LEASE)
    assert claim is not None and claim.ref == "evt-a"
    await queue.retry_at(claim, utc_now() + timedelta(hours=1))
    depth = await queue.depth()
    assert depth["event"]["total"] >= 1 and set(depth) == {"task", "delivery", "event"}
    assert await queue.purge_namespace(s.namespace_id) == 1


async def test_concurrent_claims_never_share_a_row(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    s = scope()
    for i in range(20):
        await queue.schedule("delivery", s, f"row-{i}", due=utc_now())
    claims = await asyncio.gather(*(queue.claim("delivery", lease=LEASE) for _ in range(30)))
    refs = [c.ref for c in claims if c is not None]
    assert sorted(refs) == sorted(f"row-{i}" for i in range(20))
    await queue.purge_namespace(s.namespace_id)


def test_vectors_pack_as_float32() -> None:
    values = [0.5, -1.25, 3.0e-8, 1e30]
    packed = pack_vector(values)
    assert len(packed) == 16
    assert unpack_vector(packed) == pytest.approx(values, rel=1e-6)


async def test_task_lifecycle_and_fencing(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    tasks = TaskStore(mongo=quiet_mongo, queue=queue)
    s = scope()
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
    s = scope()
    record = await tasks.submit(s, documents=[DocumentItem("d1", {}, {})], points=[])
    canceled = await tasks.cancel(s, record.task_id)
    assert canceled.state == "canceled" and canceled.finished_at is not None
    claim = await queue.claim("task", lease=LEASE)
    assert claim is not None
    run = await tasks.begin(s, record.task_id, token=claim.token)
    assert run is not None and run.final_event is not None
    assert run.final_event.event_type == "task.canceled"
    await queue.purge_namespace(s.namespace_id)


async def test_ingest_writes_once_per_writer(quiet_mongo: MongoStore) -> None:
    documents = DocumentStore(mongo=quiet_mongo)
    s = scope()
    for _ in range(3):  # a task replayed after a crash
        await documents.ingest(s, writer="task_a", document_id="d", body={"v": 1}, metadata={})
    assert (await documents.get(s, "d")).revision == 1
    await documents.ingest(s, writer="task_b", document_id="d", body={"v": 2}, metadata={})
    got = await documents.get(s, "d")
    assert got.revision == 2 and got.body == {"v": 2}


async def test_publish_is_idempotent_and_recoverable(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    webhooks = WebhookStore(mongo=quiet_mongo, box=SecretBox(b"x" * 32))
    deliveries = DeliveryStore(mongo=quiet_mongo)
    outbox = EventOutbox(mongo=quiet_mongo, queue=queue, webhooks=webhooks, deliveries=deliveries)
    s = scope()
    hook, _ = await webhooks.create(
        s, url="https://hooks.example/x", event_types=("task.completed",), description=""
    )
    await webhooks.create(
        s, url="https://hooks.example/y", event_types=("task.failed",), description=""
    )
    event = await outbox.publish(s, "task.completed", {"task_id": "t"})
    assert await outbox.publish_event(s, event) == event  # again: nothing new
    assert await quiet_mongo.scoped("deliveries", s).count_documents({}) == 1  # only the subscriber
    rows = await queue.rows_of(s.namespace_id)
    assert [r["kind"] for r in rows] == ["delivery"]  # the event's own row is gone
    assert "internal_id" not in rows[0]
    # a publisher that died after reserving: the recovery finds no event and drops the row
    await queue.reserve("event", s, "evt_missing")
    await quiet_mongo.work_queue.update_one(
        {"_id": "event:evt_missing"}, {"$set": {"due_at": utc_now()}}
    )
    claim = await queue.claim("event", lease=LEASE)
    assert claim is not None
    await outbox.recover(claim)
    assert [r["kind"] for r in await queue.rows_of(s.namespace_id)] == ["delivery"]
    assert hook.webhook_id
    await queue.purge_namespace(s.namespace_id)


async def test_concurrent_rotations_never_lose_an_issued_secret(quiet_mongo: MongoStore) -> None:
    webhooks = WebhookStore(mongo=quiet_mongo, box=SecretBox(b"x" * 32))
    s = scope()
    hook, first = await webhooks.create(
        s, url="https://hooks.example/r", event_types=("*",), description=""
    )
    results = await asyncio.gather(
        *(webhooks.rotate(s, hook.webhook_id, grace=timedelta(hours=1)) for _ in range(3)),
        return_exceptions=True,
    )
    issued = [r[1] for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert issued and all(isinstance(r, FailedPreconditionError) for r in refused)
    found = await webhooks.for_delivery(s, hook.webhook_id)
    assert found is not None
    assert {first, *issued} == set(found[1])  # every secret handed out signs
    # sealed at rest: the stored document does not contain them
    raw = await quiet_mongo.scoped("webhooks", s).find_one({"webhook_id": hook.webhook_id})
    assert raw is not None and not any(x[6:] in str(raw) for x in (first, *issued))
