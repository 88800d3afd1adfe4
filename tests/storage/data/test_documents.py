"""The document store over the wire, in a database no server works on."""

from __future__ import annotations

from datetime import timedelta

from storage.backends.mongo import MongoStore
from storage.data.documents import DocumentStore
from tests.support.tenants import random_scope

LEASE = timedelta(seconds=30)


async def test_ingest_writes_once_per_writer(quiet_mongo: MongoStore) -> None:
    documents = DocumentStore(mongo=quiet_mongo)
    s = random_scope()
    for _ in range(3):  # a task replayed after a crash
        await documents.ingest(s, writer="task_a", document_id="d", body={"v": 1}, metadata={})
    assert (await documents.get(s, "d")).revision == 1
    await documents.ingest(s, writer="task_b", document_id="d", body={"v": 2}, metadata={})
    got = await documents.get(s, "d")
    assert got.revision == 2 and got.body == {"v": 2}
