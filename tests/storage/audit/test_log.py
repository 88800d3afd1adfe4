"""The audit log's writer: a store outage keeps the events queued, and a full queue refuses."""

from __future__ import annotations

import asyncio

import pytest

from server.embedded import EmbeddedMongo
from storage.audit.log import AuditLog
from storage.backends.mongo import MongoStore
from storage.core.errors import UnavailableError
from tests.support.processes import free_port
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
