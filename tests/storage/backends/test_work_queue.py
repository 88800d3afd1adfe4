"""The work queue over the wire, in a database no server works on: claims, leases, fences."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from storage.backends.mongo import MongoStore
from storage.backends.work_queue import WorkQueue
from storage.core.clock import utc_now
from tests.support.tenants import random_scope

LEASE = timedelta(seconds=30)


async def test_claims_are_exclusive_leased_and_fenced(quiet_mongo: MongoStore) -> None:
    queue = WorkQueue(mongo=quiet_mongo)
    s = random_scope()
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
    s = random_scope()
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
    s = random_scope()
    for i in range(20):
        await queue.schedule("delivery", s, f"row-{i}", due=utc_now())
    claims = await asyncio.gather(*(queue.claim("delivery", lease=LEASE) for _ in range(30)))
    refs = [c.ref for c in claims if c is not None]
    assert sorted(refs) == sorted(f"row-{i}" for i in range(20))
    await queue.purge_namespace(s.namespace_id)
