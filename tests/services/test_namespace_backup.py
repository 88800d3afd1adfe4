"""ExportNamespace and ImportNamespace through the real server: a round trip of 10,000
documents and 10,000 points, and a restore that trusts nothing in the file."""

from __future__ import annotations

import gzip
import json
from typing import Any

import grpc
import pytest
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import options_pb2

from server.backends import Backends
from storage.core.backup_format import BackupEncoder
from storage.data.documents import DocumentStore
from tests.support.backups import (
    DIMENSION,
    comparable,
    export_namespace,
    file_items,
    fill,
    import_namespace,
)
from tests.support.clients import rpc_error
from tests.support.namespace_clients import Docs, Hooks, Vectors, doc
from tests.support.servers import BulkServer
from tests.support.tenants import MakeTenant, Tenant, scope_of
from tests.support.webhooks import Receiver

ITEMS = 10_000


def items_only(data: bytes) -> list[dict[str, Any]]:
    return file_items(data)[1]


async def test_a_namespace_round_trips_into_another_organization(
    bulk_server: BulkServer, receiver: Receiver
) -> None:
    """On a server and database of their own: 20,000 documents left in the session's
    database would slow every later filtered list (tests/conftest.py `bulk_server`)."""
    backends = bulk_server.backends
    source_tenant, target_tenant = await bulk_server.tenant(), await bulk_server.tenant()
    source = (await source_tenant.namespace()).namespace_id
    await Vectors(source_tenant, source).create(dimension=DIMENSION)
    hook = await Hooks(source_tenant, source).create(
        receiver.url("/restored"), ("task.completed",), "orders"
    )
    await fill(
        backends, await scope_of(source_tenant, backends, source), documents=ITEMS, points=ITEMS
    )

    data, progress = await export_namespace(source_tenant, source)
    manifest, items = file_items(data)
    assert manifest["counts"] == {"documents": ITEMS, "points": ITEMS, "webhooks": 1}
    assert manifest["namespace"]["namespace_id"] == source
    assert progress[-1].done == progress[-1].total
    assert progress[-1].total.documents == ITEMS and progress[-1].total.points == ITEMS
    assert len(progress) > 10  # it reported along the way
    assert hook.secret not in data.decode("latin-1") and "whsec_" not in json.dumps(items)

    target = (await target_tenant.namespace()).namespace_id
    restored = await import_namespace(target_tenant, target, data)
    assert restored.namespace_id == target
    assert (restored.restored.documents, restored.restored.points) == (ITEMS, ITEMS)
    [new_hook] = restored.webhooks
    assert new_hook.webhook_id == hook.webhook.webhook_id and new_hook.secret != hook.secret

    # the target exports to the same items: documents, points (in another order: Qdrant's
    # ids depend on the namespace), webhooks, vector store
    again, _ = await export_namespace(target_tenant, target)
    assert comparable(items_only(again)) == comparable(items)
    # and it answers through the API like the source
    docs = Docs(target_tenant, target)
    got = await docs.stub.GetDocument(
        doc_pb.GetDocumentRequest(document_id="doc-04242"), metadata=docs.md
    )
    assert got.document.body["n"] == 4242
    hits = await Vectors(target_tenant, target).search(
        [float((7 * k) % 13) / 13 for k in range(1, DIMENSION + 1)]
    )
    assert int(hits[0].point.id.removeprefix("p-")) % 13 == 7  # the vectors repeat every 13


async def test_a_crafted_file_naming_another_namespace_lands_in_the_target_only(
    make_tenant: MakeTenant, backends: Backends
) -> None:
    victim, attacker = await make_tenant(), await make_tenant()
    victim_ns = (await victim.namespace()).namespace_id
    victim_internal = (await scope_of(victim, backends, victim_ns)).internal_id
    encoder = BackupEncoder()
    data = encoder.manifest(
        meshgate_version="0.1.0",
        exported_at="2026-01-01T00:00:00+00:00",
        namespace={"namespace_id": victim_ns, "internal_id": victim_internal},
        counts={},
    )
    forged = {"namespace_id": victim_ns, "internal_id": victim_internal}
    data += encoder.item(
        "document",
        {
            "document_id": "planted",
            "body": {"x": 1},
            "metadata": {},
            "created_at": "2026-01-01T00:00:00+00:00",
            "updated_at": "2026-01-01T00:00:00+00:00",
            "revision": 1,
            **forged,
        },
    )
    data += encoder.item("vector_store", {"dimension": 3, "distance": "cosine", **forged})
    data += encoder.item("point", {"point_id": "pp", "vector": [1, 0, 0], "payload": {}, **forged})
    data += encoder.end()
    target = (await attacker.namespace()).namespace_id
    await import_namespace(attacker, target, data)

    assert await Docs(attacker, target).list_ids() == ["planted"]
    assert await Docs(victim, victim_ns).list_ids() == []
    victim_scope = await scope_of(victim, backends, victim_ns)
    assert await DocumentStore(mongo=backends.mongo).count(victim_scope) == 0
    missing = await rpc_error(Vectors(victim, victim_ns).search([1, 0, 0]))
    assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION  # no vector store there
    assert [h.point.id for h in await Vectors(attacker, target).search([1, 0, 0])] == ["pp"]


def damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) * 2 // 3]
    lines = gzip.decompress(data).splitlines(keepends=True)
    if how == "checksum":
        lines[1] = lines[1].replace(b'"revision":1', b'"revision":2')
        assert lines[1].count(b'"revision":2') == 1
    else:  # another format version
        manifest = json.loads(lines[0])
        manifest["format_version"] = 99
        lines[0] = json.dumps(manifest).encode() + b"\n"
    return gzip.compress(b"".join(lines))


@pytest.fixture(scope="module")
async def exported(bulk_server: BulkServer) -> tuple[Tenant, bytes]:
    """A namespace of 1,500 documents and 300 points and its file, made once for the
    damaged-file cases, on the bulk server (tests/conftest.py `bulk_server`)."""
    tenant = await bulk_server.tenant()
    source = (await tenant.namespace()).namespace_id
    await Vectors(tenant, source).create(dimension=DIMENSION)
    scope = await scope_of(tenant, bulk_server.backends, source)
    await fill(bulk_server.backends, scope, documents=1500, points=300)
    data, _ = await export_namespace(tenant, source)
    return tenant, data


@pytest.mark.parametrize("how", ["truncated", "checksum", "version"])
async def test_a_damaged_file_is_refused_and_nothing_is_written(
    exported: tuple[Tenant, bytes], how: str
) -> None:
    tenant, data = exported
    target = (await tenant.namespace()).namespace_id
    error = await rpc_error(import_namespace(tenant, target, damaged(data, how)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing was written" in (error.details() or "")
    assert await Docs(tenant, target).list_ids() == []
    no_store = await rpc_error(Vectors(tenant, target).search([0.0] * DIMENSION))
    assert no_store.code() == grpc.StatusCode.FAILED_PRECONDITION
    # the namespace is still empty and unclaimed: the intact file restores into it
    restored = await import_namespace(tenant, target, data)
    assert restored.restored.documents == 1500


async def test_only_an_empty_namespace_takes_a_restore(tenant: Tenant) -> None:
    source = (await tenant.namespace()).namespace_id
    await Docs(tenant, source).create(doc("one", {"a": 1}))
    data, _ = await export_namespace(tenant, source)
    target = (await tenant.namespace()).namespace_id
    await Docs(tenant, target).create(doc("mine", {"b": 2}))
    error = await rpc_error(import_namespace(tenant, target, data))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await Docs(tenant, target).list_ids() == ["mine"]


async def test_backup_and_restore_need_admin(tenant: Tenant) -> None:
    ns = (await tenant.namespace()).namespace_id
    writer = (await tenant.key(options_pb2.PERMISSION_WRITE, options_pb2.PERMISSION_DELETE)).secret
    error = await rpc_error(export_namespace(tenant, ns, secret=writer))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
