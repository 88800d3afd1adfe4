"""The audit log's writer and its chain: a store outage keeps the events queued, a full queue
refuses, replicas never fork the chain, and truncation or rewriting is seen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from server.embedded import EmbeddedMongo
from storage.audit.anchor import AuditAnchor
from storage.audit.chain import event_hash
from storage.audit.log import AuditLog
from storage.backends.failures import backend_unavailable
from storage.backends.mongo import MongoStore
from storage.core.errors import UnavailableError
from storage.core.ids import new_organization_id
from tests.support.processes import RedisServer, free_port
from tests.support.waiting import eventually


async def test_audit_survives_a_store_outage_and_refuses_when_full() -> None:
    port = free_port()
    store = MongoStore(
        uri=f"mongodb://127.0.0.1:{port}/?directConnection=true",
        database="audit_outage",
        timeout_ms=300,
    )
    log = AuditLog(mongo=store, max_queue=3, retry_s=0.1)
    for i in range(3):
        log.record(organization_id="org_outage", actor_key_id=f"key_{i}", method="/m", outcome="OK")
    with pytest.raises(UnavailableError):
        log.check_room()  # an audited call would be refused up front, not run unaudited
    writer = asyncio.create_task(log.run())
    await asyncio.sleep(1.0)
    assert log.depth == 3 and log.failures >= 1  # kept, not dropped
    engine = EmbeddedMongo(data_dir=None, port=port)
    await asyncio.to_thread(engine.start)
    try:

        async def written() -> bool:
            return log.depth == 0

        await eventually(written, timeout_s=10, interval_s=0.1)
        assert log.written == 3
        report = await log.verify("org_outage")
        assert report.intact and report.checked == 3
    finally:
        writer.cancel()
        await store.close()
        await asyncio.to_thread(engine.close)


def record(log: AuditLog, organization_id: str, n: int, *, tag: str) -> None:
    for i in range(n):
        log.record(
            organization_id=organization_id,
            actor_key_id=f"key_{tag}{i}",
            method="/meshgate.v1.KeyService/CreateKey",
            outcome="OK",
        )


async def all_sequences(blocks: Any, organization_id: str) -> list[int]:
    cursor = blocks.find({"organization_id": organization_id}).sort("first_sequence", 1)
    return [e["sequence"] async for block in cursor for e in block["events"]]


@pytest.fixture
async def anchor(redis_server: RedisServer) -> AsyncIterator[AuditAnchor]:
    redis = Redis.from_url(redis_server.url)
    yield AuditAnchor(redis=redis)
    await redis.aclose()


async def test_writers_with_stale_heads_never_fork_the_chain(
    mongo_uri: str, quiet_mongo: MongoStore, anchor: AuditAnchor
) -> None:
    """Three writers (replicas: each its own client and cached head) append for one
    organization in an order that leaves two of them with a stale head, as in the review
    (blocks 1-98 and 96-105). Every append still chains after the real head."""
    organization_id = new_organization_id()
    stores = [MongoStore(uri=mongo_uri, database=quiet_mongo.database.name) for _ in range(3)]
    one, two, three = (AuditLog(mongo=s, anchor=anchor) for s in stores)
    try:
        record(one, organization_id, 95, tag="a")
        await one.flush()  # one's head: block 1 at 95
        record(two, organization_id, 3, tag="b")
        await two.flush()  # block 1 at 98; one's head is stale
        record(three, organization_id, 2, tag="c")
        await three.flush()  # block 1 full at 100; two's head is stale too
        record(one, organization_id, 10, tag="d")
        await one.flush()  # stale at 95: would open a block at 96
        record(two, organization_id, 5, tag="e")
        await two.flush()  # stale at 98: would open a block at 99
        record(three, organization_id, 1, tag="f")
        await three.flush()  # stale at 100 (block 1 full): would open a block at 101
        for log, tag in ((one, "g"), (two, "h"), (three, "i")):  # and all at once
            record(log, organization_id, 40, tag=tag)
        await asyncio.gather(one.flush(), two.flush(), three.flush())
        total = 95 + 3 + 2 + 10 + 5 + 1 + 120
        assert await all_sequences(quiet_mongo.database["audit_blocks"], organization_id) == list(
            range(1, total + 1)
        )
        report = await one.verify(organization_id)
        assert report.intact, report
        assert report.checked == report.last_sequence == report.anchored_sequence == total
    finally:
        for store in stores:
            await store.close()


async def test_verify_sees_the_newest_events_and_the_whole_chain_removed(
    quiet_mongo: MongoStore, anchor: AuditAnchor
) -> None:
    """The review removed events 61-150 of 150 and got intact=true, checked=60. An insider
    who also fixes the block's bookkeeping is caught by the head anchored in Redis."""
    organization_id = new_organization_id()
    log = AuditLog(mongo=quiet_mongo, anchor=anchor)
    blocks = quiet_mongo.database["audit_blocks"]
    record(log, organization_id, 150, tag="t")
    await log.flush()
    report = await log.verify(organization_id)
    assert report.intact and report.last_sequence == report.anchored_sequence == 150
    block = await blocks.find_one({"organization_id": organization_id, "first_sequence": 101})
    assert block is not None
    kept = [e for e in block["events"] if e["sequence"] <= 110]
    await blocks.delete_many({"organization_id": organization_id, "first_sequence": {"$gt": 101}})
    await blocks.update_one(
        {"_id": block["_id"]},
        {
            "$set": {
                "events": kept,
                "count": len(kept),
                "last_sequence": 110,
                "last_hash": kept[-1]["hash"],
            }
        },
    )
    report = await log.verify(organization_id)
    assert not report.intact
    assert (report.checked, report.broken_sequence, report.last_sequence) == (110, 111, 110)
    assert "newest events were removed" in report.reason
    await blocks.delete_many({"organization_id": organization_id})
    report = await log.verify(organization_id)
    assert not report.intact and report.checked == 0 and report.broken_sequence == 1
    assert report.anchored_sequence == 150


async def test_verify_sees_a_chain_rewritten_with_recomputed_hashes(
    quiet_mongo: MongoStore, anchor: AuditAnchor
) -> None:
    """The hash chain has no secret: whoever writes the collection can edit an event and
    recompute every hash after it. The anchored head's hash no longer matches."""
    organization_id = new_organization_id()
    log = AuditLog(mongo=quiet_mongo, anchor=anchor)
    blocks = quiet_mongo.database["audit_blocks"]
    record(log, organization_id, 20, tag="r")
    await log.flush()
    block = await blocks.find_one({"organization_id": organization_id})
    assert block is not None
    events = block["events"]
    events[4]["outcome"] = "PERMISSION_DENIED"
    previous = events[3]["hash"]
    for event in events[4:]:
        event["previous_hash"] = previous
        event["hash"] = previous = event_hash(event)
    await blocks.update_one(
        {"_id": block["_id"]}, {"$set": {"events": events, "last_hash": previous}}
    )
    report = await log.verify(organization_id)
    assert not report.intact
    assert report.checked == 20 and report.broken_sequence == 20
    assert "rewritten" in report.reason


async def test_without_redis_the_chain_is_written_and_verify_is_unavailable(
    quiet_mongo: MongoStore,
) -> None:
    """The anchor is best effort for the writer (events are never held back for it), and a
    verification that cannot read it refuses to answer rather than claim more than it
    checked (the request path maps the driver error to UNAVAILABLE)."""
    dead = Redis(port=free_port(), socket_connect_timeout=0.2)
    log = AuditLog(mongo=quiet_mongo, anchor=AuditAnchor(redis=dead, timeout_s=0.5))
    organization_id = new_organization_id()
    record(log, organization_id, 3, tag="n")
    await log.flush()
    record(log, organization_id, 2, tag="m")
    await log.flush()  # within the retry window: the anchor is not even tried
    assert log.written == 5
    with pytest.raises(Exception) as info:
        await log.verify(organization_id)
    assert backend_unavailable(info.value)
    await dead.aclose()
