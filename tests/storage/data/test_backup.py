"""Restore interrupted part-way, then retried: it ends as an uninterrupted restore does; an
export past its deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from server.app import RunningServer
from server.backends import Backends
from storage.core.clock import utc_now
from storage.core.errors import DeadlineExceededError
from storage.data.backup import BackupLimits, ExportProgress, NamespaceBackup
from storage.data.documents import DocumentStore
from storage.tenancy.namespaces import Namespace
from tests.support.backups import comparable, export_namespace, file_items, fill, import_namespace
from tests.support.clients import rpc_error
from tests.support.held import HeldScopedMongo
from tests.support.namespace_clients import Docs, Hooks, Vectors, doc
from tests.support.servers import BulkServer
from tests.support.tenants import random_scope, scope_of
from tests.support.webhooks import Receiver


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


async def test_an_interrupted_restore_is_retried_to_the_same_state(
    bulk_server: BulkServer, receiver: Receiver, mongo_uri: str
) -> None:
    """On a server and database of their own: thousands of documents left in the session's
    database would slow every later filtered list (tests/conftest.py `bulk_server`)."""
    tenant, backends, server = await bulk_server.tenant(), bulk_server.backends, bulk_server.running
    database_name = backends.mongo.database.name
    source = (await tenant.namespace()).namespace_id
    await Vectors(tenant, source).create(dimension=8)
    await Hooks(tenant, source).create(receiver.url("/interrupted"))
    await fill(backends, await scope_of(tenant, backends, source), documents=1600, points=600)
    data, _ = await export_namespace(tenant, source)

    # the restore stops (the process dies) right after its first batch of documents is written
    target = (await tenant.namespace()).namespace_id
    target_scope = await scope_of(tenant, backends, target)
    held = HeldScopedMongo(uri=mongo_uri, database=database_name, name="documents")
    c = server.components
    interrupted = NamespaceBackup(
        mongo=held,
        documents=DocumentStore(mongo=held),
        vectors=c.vectors,
        webhooks=c.webhooks,
        vet_url=c.sender.vet,
        meshgate_version="test",
    )
    pause = held.held.hold("insert_many")
    restore = asyncio.create_task(interrupted.restore(target_scope, chunks_of(data)))
    await pause.arrived()
    restore.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await restore
    await held.close()
    assert 0 < await DocumentStore(mongo=backends.mongo).count(target_scope) < 1600

    # another file is not mixed into the half-restored namespace
    other = (await tenant.namespace()).namespace_id
    await Docs(tenant, other).create(doc("other", {"a": 1}))
    other_data, _ = await export_namespace(tenant, other)
    refused = await rpc_error(import_namespace(tenant, target, other_data))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION

    # the same file again completes it; and a third namespace restored in one go is the same
    retried = await import_namespace(tenant, target, data)
    assert retried.restored.documents == 1600 and retried.restored.points == 600
    clean = (await tenant.namespace()).namespace_id
    await import_namespace(tenant, clean, data)
    after_retry, _ = await export_namespace(tenant, target)
    uninterrupted, _ = await export_namespace(tenant, clean)
    assert comparable(file_items(after_retry)[1]) == comparable(file_items(uninterrupted)[1])
    assert comparable(file_items(after_retry)[1]) == comparable(file_items(data)[1])
    # restoring the same file once more changes nothing
    await import_namespace(tenant, target, data)
    again, _ = await export_namespace(tenant, target)
    assert comparable(file_items(again)[1]) == comparable(file_items(data)[1])


async def test_an_export_past_its_deadline_is_stopped(
    backends: Backends, server: RunningServer
) -> None:
    """A client that takes each message, slowly, never idle for long: the export stops at
    its deadline, and its reads are closed."""
    scope = random_scope()
    await DocumentStore(mongo=backends.mongo).create(
        scope, document_id="d", body={"a": 1}, metadata={}
    )
    namespace = Namespace(scope.namespace_id, scope.internal_id, "slow", "development", utc_now())
    c = server.components
    backup = NamespaceBackup(
        mongo=backends.mongo,
        documents=c.documents,
        vectors=c.vectors,
        webhooks=c.webhooks,
        vet_url=c.sender.vet,
        meshgate_version="test",
        limits=BackupLimits(export_deadline_s=1.0, idle_s=5.0),
    )
    sent: list[object] = []

    async def slow_client(piece: bytes | ExportProgress) -> None:
        sent.append(piece)
        await asyncio.sleep(0.7)

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="longer than the 1 s"):
        await backup.export_to(scope, namespace, slow_client)
    assert 1.0 <= time.monotonic() - started < 3.0
    assert len(sent) == 2  # the file's bytes, then the final progress: cut during the latter
