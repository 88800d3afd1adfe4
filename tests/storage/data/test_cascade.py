"""Deleting a namespace removes its documents, its Qdrant collection and its Redis keys
(on a single redis-server and on a Redis Cluster)."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import document_service_pb2, namespace_service_pb2

from server.app import RunningServer
from server.backends import Backends
from storage.backends.redis_client import RedisClient
from storage.backends.redis_keys import namespace_key
from storage.backends.scoped import Scope
from storage.data.cascade import NamespacePurger
from storage.data.documents import DocumentStore
from storage.data.vectors import VectorStore, collection_name
from storage.tenancy.namespaces import NamespaceStore
from storage.tenancy.organizations import OrganizationStore
from tests.support.clients import auth
from tests.support.namespace_clients import Docs, Vectors, doc, point
from tests.support.redis_cluster import RedisEndpoint
from tests.support.tenants import Tenant


async def filled_namespace(
    tenant: Tenant, backends: Backends, redis: RedisClient | None = None
) -> tuple[namespace_service_pb2.Namespace, Scope]:
    ns = await tenant.namespace()
    docs, vectors = Docs(tenant, ns.name), Vectors(tenant, ns.name)
    for i in range(3):
        await docs.create(doc(f"d{i}"))
    await vectors.create(3)
    await vectors.upsert(point("p", [1, 0, 0]))
    await (redis or backends.redis).set(namespace_key(ns.namespace_id, "probe"), "1")
    org = await OrganizationStore(mongo=backends.mongo).get(tenant.organization_id)
    return ns, Scope(internal_id=org.internal_id, namespace_id=ns.namespace_id)


async def remains(
    backends: Backends, scope: Scope, redis: RedisClient | None = None
) -> dict[str, int]:
    """What is left of the namespace; its Redis keys are looked for on every node."""
    return {
        "documents": await DocumentStore(mongo=backends.mongo).count(scope),
        "vector_configs": await backends.mongo.scoped("vector_stores", scope).count_documents(),
        "qdrant": int(await backends.qdrant.collection_exists(collection_name(scope.namespace_id))),
        "redis": len(
            [
                k
                async for k in (redis or backends.redis).scan_iter(
                    match=namespace_key(scope.namespace_id, "*")
                )
            ]
        ),
        "namespace": await backends.mongo.namespaces.count_documents({"_id": scope.namespace_id}),
    }


async def test_delete_removes_everything(tenant: Tenant, backends: Backends) -> None:
    ns, scope = await filled_namespace(tenant, backends)
    other, other_scope = await filled_namespace(tenant, backends)
    assert (await remains(backends, scope))["documents"] == 3
    await tenant.namespaces.DeleteNamespace(
        namespace_service_pb2.DeleteNamespaceRequest(), metadata=auth(tenant.admin, ns.name)
    )
    assert await remains(backends, scope) == dict.fromkeys(
        ("documents", "vector_configs", "qdrant", "redis", "namespace"), 0
    )
    assert await remains(backends, other_scope) == {
        "documents": 3,
        "vector_configs": 1,
        "qdrant": 1,
        "redis": 1,
        "namespace": 1,
    }
    # deleting again: the namespace no longer exists
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.namespaces.DeleteNamespace(
            namespace_service_pb2.DeleteNamespaceRequest(),
            metadata=auth(tenant.admin, ns.namespace_id),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert other.namespace_id != ns.namespace_id


async def test_interrupted_deletion_is_unusable_at_once_and_finished_later(
    tenant: Tenant, backends: Backends, server: RunningServer, redis_endpoint: RedisEndpoint
) -> None:
    redis = await redis_endpoint.connect()
    ns, scope = await filled_namespace(tenant, backends, redis)
    docs = Docs(tenant, ns.name)
    await docs.list_ids()  # the namespace is cached by the server now
    namespaces = NamespaceStore(mongo=backends.mongo)
    # a deletion that crashed right after its first step
    await namespaces.mark_deleting(internal_id=scope.internal_id, namespace_id=scope.namespace_id)
    await server.invalidation.namespace_deleted(scope.namespace_id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await docs.stub.GetDocument(
            document_service_pb2.GetDocumentRequest(document_id="d0"), metadata=docs.md
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # the name cannot be reused while the deletion is pending
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.namespace(ns.name)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    before = await remains(backends, scope, redis)
    assert (before["documents"], before["redis"]) == (3, 1)
    purger = NamespacePurger(
        mongo=backends.mongo,
        redis=redis,
        vectors=VectorStore(mongo=backends.mongo, qdrant=backends.qdrant, payload_index=False),
        namespaces=namespaces,
    )
    # a half-done purge, then the sweeper the server runs at start-up and every minute
    await backends.mongo.scoped("documents", scope).delete_one({"document_id": "d0"})
    assert await purger.finish_pending() >= 1
    assert set((await remains(backends, scope, redis)).values()) == {0}
    assert await purger.finish_pending() == 0  # idempotent
    await tenant.namespace(ns.name)  # and the name is free again
    await redis.aclose()
