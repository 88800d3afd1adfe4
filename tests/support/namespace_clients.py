"""One namespace's caller of the data services, as a tenant's key uses them, and the
messages tests build for them (`doc`, `point`)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, NamedTuple

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.struct_pb2 import Struct
from meshgate.v1 import common_pb2, key_service_pb2, options_pb2
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import document_service_pb2_grpc as doc_grpc
from meshgate.v1 import namespace_service_pb2 as ns_pb
from meshgate.v1 import task_service_pb2 as task_pb
from meshgate.v1 import task_service_pb2_grpc as task_grpc
from meshgate.v1 import vector_service_pb2 as vec_pb
from meshgate.v1 import vector_service_pb2_grpc as vec_grpc
from meshgate.v1 import webhook_service_pb2 as hook_pb
from meshgate.v1 import webhook_service_pb2_grpc as hook_grpc

from server.backends import Backends
from tests.support.clients import auth, rpc_error
from tests.support.tenants import Tenant, admin_of_environment
from tests.support.waiting import eventually

__all__ = ["FINAL_TASK_STATES", "Docs", "Hooks", "Tasks", "Vectors", "doc", "point", "struct"]

FINAL_TASK_STATES = (
    task_pb.TASK_STATE_COMPLETED,
    task_pb.TASK_STATE_FAILED,
    task_pb.TASK_STATE_CANCELED,
)


def struct(value: Mapping[str, Any]) -> Struct:
    out = Struct()
    out.update(value)
    return out


def doc(
    document_id: str = "", body: Mapping[str, Any] | None = None, **metadata: Any
) -> doc_pb.Document:
    return doc_pb.Document(
        document_id=document_id, body=struct(body or {}), metadata=struct(metadata)
    )


def point(pid: str, vector: Sequence[float], **payload: Any) -> vec_pb.Point:
    return vec_pb.Point(id=pid, vector=vector, payload=struct(payload))


class _NamespaceCaller:
    """A key (the tenant's ADMIN key unless given) acting in one namespace."""

    def __init__(self, tenant: Tenant, namespace: str, secret: str | None = None) -> None:
        self.md = auth(secret or tenant.admin, namespace)

    async def error(self, call: Awaitable[object]) -> grpc.aio.AioRpcError:
        return await rpc_error(call)


class Docs(_NamespaceCaller):
    def __init__(self, tenant: Tenant, namespace: str, secret: str | None = None) -> None:
        super().__init__(tenant, namespace, secret)
        self.stub: doc_grpc.DocumentServiceAsyncStub = doc_grpc.DocumentServiceStub(tenant.channel)

    async def create(self, document: doc_pb.Document) -> doc_pb.Document:
        response = await self.stub.CreateDocument(
            doc_pb.CreateDocumentRequest(document=document), metadata=self.md
        )
        return response.document

    async def list_ids(
        self, filter: Mapping[str, Any] | None = None, page_size: int = 0
    ) -> list[str]:
        """Every page of ListDocuments."""
        ids: list[str] = []
        token = ""
        while True:
            request = doc_pb.ListDocumentsRequest(page_size=page_size, page_token=token)
            if filter is not None:
                request.filter.CopyFrom(struct(filter))
            page = await self.stub.ListDocuments(request, metadata=self.md)
            ids.extend(d.document_id for d in page.documents)
            token = page.next_page_token
            if not token:
                return ids


class Vectors(_NamespaceCaller):
    def __init__(self, tenant: Tenant, namespace: str, secret: str | None = None) -> None:
        super().__init__(tenant, namespace, secret)
        self.stub: vec_grpc.VectorServiceAsyncStub = vec_grpc.VectorServiceStub(tenant.channel)

    async def create(
        self, dimension: int = 3, distance: vec_pb.Distance.ValueType = vec_pb.DISTANCE_COSINE
    ) -> vec_pb.VectorStore:
        store = vec_pb.VectorStore(dimension=dimension, distance=distance)
        response = await self.stub.CreateVectorStore(
            vec_pb.CreateVectorStoreRequest(vector_store=store), metadata=self.md
        )
        return response.vector_store

    async def upsert(self, *points: vec_pb.Point) -> int:
        response = await self.stub.UpsertPoints(
            vec_pb.UpsertPointsRequest(points=points), metadata=self.md
        )
        return response.upserted

    async def search(
        self, vector: Sequence[float], filter: Mapping[str, Any] | None = None, **kw: Any
    ) -> list[vec_pb.ScoredPoint]:
        request = vec_pb.SearchRequest(vector=vector, **kw)
        if filter is not None:
            request.filter.update(filter)
        return list((await self.stub.Search(request, metadata=self.md)).results)


class Tasks(_NamespaceCaller):
    def __init__(self, tenant: Tenant, namespace: str, secret: str | None = None) -> None:
        super().__init__(tenant, namespace, secret)
        self.stub: task_grpc.TaskServiceAsyncStub = task_grpc.TaskServiceStub(tenant.channel)

    async def submit(
        self, documents: Sequence[doc_pb.Document] = (), points: Sequence[vec_pb.Point] = ()
    ) -> task_pb.Task:
        response = await self.stub.SubmitIngestion(
            task_pb.SubmitIngestionRequest(documents=list(documents), points=list(points)),
            metadata=self.md,
        )
        return response.task

    async def get(self, task_id: str) -> task_pb.Task:
        response = await self.stub.GetTask(
            task_pb.GetTaskRequest(task_id=task_id), metadata=self.md
        )
        return response.task

    async def final(self, task_id: str, timeout_s: float = 10.0) -> task_pb.Task:
        """The task once it is completed, failed or canceled."""

        async def done() -> bool:
            return (await self.get(task_id)).state in FINAL_TASK_STATES

        await eventually(done, timeout_s=timeout_s)
        return await self.get(task_id)

    async def list_ids(self, *states: task_pb.TaskState.ValueType, page_size: int = 0) -> list[str]:
        """Every page of ListTasks."""
        ids: list[str] = []
        token = ""
        while True:
            page = await self.stub.ListTasks(
                task_pb.ListTasksRequest(
                    states=list(states), page_size=page_size, page_token=token
                ),
                metadata=self.md,
            )
            ids.extend(t.task_id for t in page.tasks)
            token = page.next_page_token
            if not token:
                return ids


class Hooks(_NamespaceCaller):
    def __init__(self, tenant: Tenant, namespace: str, secret: str | None = None) -> None:
        super().__init__(tenant, namespace, secret)
        self.stub: hook_grpc.WebhookServiceAsyncStub = hook_grpc.WebhookServiceStub(tenant.channel)

    async def create(
        self, url: str, event_types: Sequence[str] = ("*",), description: str = ""
    ) -> hook_pb.CreateWebhookResponse:
        return await self.stub.CreateWebhook(
            hook_pb.CreateWebhookRequest(
                webhook=hook_pb.Webhook(
                    url=url, event_types=list(event_types), description=description
                )
            ),
            metadata=self.md,
        )

    async def get(self, webhook_id: str) -> hook_pb.Webhook:
        response = await self.stub.GetWebhook(
            hook_pb.GetWebhookRequest(webhook_id=webhook_id), metadata=self.md
        )
        return response.webhook

    async def deliveries(
        self, webhook_id: str, *statuses: hook_pb.DeliveryStatus.ValueType
    ) -> list[hook_pb.Delivery]:
        response = await self.stub.ListDeliveries(
            hook_pb.ListDeliveriesRequest(webhook_id=webhook_id, statuses=list(statuses)),
            metadata=self.md,
        )
        return list(response.deliveries)

    async def delivery_in(
        self, webhook_id: str, status: hook_pb.DeliveryStatus.ValueType, timeout_s: float = 10.0
    ) -> hook_pb.Delivery:
        """The first of the webhook's deliveries to reach `status`."""
        found: list[hook_pb.Delivery] = []

        async def reached() -> bool:
            found[:] = await self.deliveries(webhook_id, status)
            return bool(found)

        await eventually(reached, timeout_s=timeout_s)
        return found[0]

    async def update(self, webhook: hook_pb.Webhook, *paths: str) -> hook_pb.Webhook:
        response = await self.stub.UpdateWebhook(
            hook_pb.UpdateWebhookRequest(webhook=webhook, update_mask=FieldMask(paths=list(paths))),
            metadata=self.md,
        )
        return response.webhook


class Spread(NamedTuple):
    """A development tenant's documents in two namespaces and in a production one, and a
    development ADMIN key restricted to the first: what the views by environment and
    allow-list are tried on."""

    prod: str  # an unrestricted production ADMIN key
    prod_ns: ns_pb.Namespace
    ns_a: ns_pb.Namespace
    ns_b: ns_pb.Namespace
    restricted: key_service_pb2.CreateKeyResponse


async def spread_across_environments(
    tenant: Tenant, backends: Backends, *, ids: tuple[str, str, str]
) -> Spread:
    """One document in each of a production namespace and two development namespaces
    (ids in that order), and the restricted key."""
    prod = await admin_of_environment(tenant, backends, "production")
    prod_ns = (
        await tenant.namespaces.CreateNamespace(
            ns_pb.CreateNamespaceRequest(
                name=f"prod-{secrets.token_hex(3)}",
                environment=common_pb2.ENVIRONMENT_PRODUCTION,
            ),
            metadata=auth(prod),
        )
    ).namespace
    ns_a, ns_b = await tenant.namespace(), await tenant.namespace()
    restricted = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(ns_a.name,))
    await Docs(tenant, prod_ns.name, prod).create(doc(ids[0]))
    await Docs(tenant, ns_a.name).create(doc(ids[1]))
    await Docs(tenant, ns_b.name).create(doc(ids[2]))
    return Spread(prod, prod_ns, ns_a, ns_b, restricted)
