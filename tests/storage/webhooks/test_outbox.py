"""The event outbox over the wire, in a database no server works on."""

from __future__ import annotations

from datetime import timedelta

from storage.backends.mongo import MongoStore
from storage.backends.work_queue import WorkQueue
from storage.core.clock import utc_now
from storage.webhooks.deliveries import DeliveryStore
from storage.webhooks.outbox import EventOutbox
from storage.webhooks.sealing import SecretBox
from storage.webhooks.store import WebhookStore
from tests.support.tenants import random_scope

LEASE = timedelta(seconds=30)


async def test_publish_is_idempotent_and_recoverable(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    webhooks = WebhookStore(mongo=quiet_mongo, box=SecretBox(b"x" * 32))
    deliveries = DeliveryStore(mongo=quiet_mongo)
    outbox = EventOutbox(mongo=quiet_mongo, queue=queue, webhooks=webhooks, deliveries=deliveries)
    s = random_scope()
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
