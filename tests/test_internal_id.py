"""internal_id never leaves the server through the public API.

1. No public response message (walked recursively through every field of every
   RPC's response type) has a field that could carry it.
2. Every RPC is called for real and its serialized response is scanned for the
   organization's internal_id value.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from meshgate.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    document_service_pb2,
    document_service_pb2_grpc,
    health_service_pb2,
    health_service_pb2_grpc,
    key_service_pb2,
    namespace_service_pb2,
    options_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
    vector_service_pb2,
    vector_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

from server.app import RunningServer
from server.backends import Backends
from server.registry import descriptors
from storage.tenancy.organizations import OrganizationStore
from tests.support.clients import Metadata, auth, client_credentials, trailers_of
from tests.support.pki import Pki
from tests.support.tenants import Tenant
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver

# the one method whose job is to return it, to allow-listed internal peers only
RESOLVER = "meshgate.v1.IdentityService.ResolveOrganization"


def field_names(message: Descriptor, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if message.full_name in seen:
        return set()
    seen.add(message.full_name)
    names: set[str] = set()
    for field in message.fields:
        names.add(field.name)
        if field.message_type is not None:
            names |= field_names(field.message_type, seen)
    return names


def test_no_public_response_can_carry_internal_id() -> None:
    walked = 0
    for service in descriptors():
        for method in service.methods:
            if method.full_name == RESOLVER:
                continue
            names = field_names(method.output_type)
            walked += 1
            assert not {n for n in names if "internal" in n}, f"{method.full_name} exposes {names}"
    assert walked >= 10


async def test_serialized_responses_of_every_rpc_omit_internal_id(
    tenant: Tenant, backends: Backends, server: RunningServer, pki: Pki, receiver: Receiver
) -> None:
    org = await OrganizationStore(mongo=backends.mongo).get(tenant.organization_id)
    needle = org.internal_id.encode()
    md = auth(tenant.admin)
    ns = await tenant.namespace()
    created = await tenant.key(options_pb2.PERMISSION_READ, namespaces=(ns.name,))
    k, n = tenant.keys, tenant.namespaces
    data_md = auth(tenant.admin, ns.name)
    docs = document_service_pb2_grpc.DocumentServiceStub(tenant.channel)
    vecs = vector_service_pb2_grpc.VectorServiceStub(tenant.channel)
    body = document_service_pb2.Document(document_id="d1")
    body.body.update({"a": 1})
    body.metadata.update({"color": "red"})
    created_doc = await docs.CreateDocument(
        document_service_pb2.CreateDocumentRequest(document=body), metadata=data_md
    )
    store = vector_service_pb2.VectorStore(dimension=2, distance=vector_service_pb2.DISTANCE_COSINE)
    data_responses = {
        "CreateDocument": created_doc,
        "BatchCreateDocuments": await docs.BatchCreateDocuments(
            document_service_pb2.BatchCreateDocumentsRequest(
                requests=[document_service_pb2.CreateDocumentRequest()]
            ),
            metadata=data_md,
        ),
        "GetDocument": await docs.GetDocument(
            document_service_pb2.GetDocumentRequest(document_id="d1"), metadata=data_md
        ),
        "ListDocuments": await docs.ListDocuments(
            document_service_pb2.ListDocumentsRequest(), metadata=data_md
        ),
        "UpdateDocument": await docs.UpdateDocument(
            document_service_pb2.UpdateDocumentRequest(
                document=body, update_mask=field_mask_pb2.FieldMask(paths=["metadata"])
            ),
            metadata=data_md,
        ),
        "DeleteDocument": await docs.DeleteDocument(
            document_service_pb2.DeleteDocumentRequest(document_id="d1"), metadata=data_md
        ),
        "CreateVectorStore": await vecs.CreateVectorStore(
            vector_service_pb2.CreateVectorStoreRequest(vector_store=store), metadata=data_md
        ),
        "GetVectorStore": await vecs.GetVectorStore(
            vector_service_pb2.GetVectorStoreRequest(), metadata=data_md
        ),
        "UpsertPoints": await vecs.UpsertPoints(
            vector_service_pb2.UpsertPointsRequest(
                points=[vector_service_pb2.Point(id="p1", vector=[1, 0])]
            ),
            metadata=data_md,
        ),
        "Search": await vecs.Search(
            vector_service_pb2.SearchRequest(vector=[1, 0], with_vectors=True), metadata=data_md
        ),
        "GetPoints": await vecs.GetPoints(
            vector_service_pb2.GetPointsRequest(ids=["p1"]), metadata=data_md
        ),
        "DeletePoints": await vecs.DeletePoints(
            vector_service_pb2.DeletePointsRequest(ids=["p1"]), metadata=data_md
        ),
    }
    tasks = task_service_pb2_grpc.TaskServiceStub(tenant.channel)
    hooks = webhook_service_pb2_grpc.WebhookServiceStub(tenant.channel)
    created_hook = await hooks.CreateWebhook(
        webhook_service_pb2.CreateWebhookRequest(
            webhook=webhook_service_pb2.Webhook(url=receiver.url("/internal-id"), event_types=["*"])
        ),
        metadata=data_md,
    )
    receiver.endpoint("/internal-id", created_hook.secret)
    receiver.script("/internal-id", 410)  # the delivery fails, so it can be retried below
    webhook_id = created_hook.webhook.webhook_id
    submitted = await tasks.SubmitIngestion(
        task_service_pb2.SubmitIngestionRequest(documents=[body]), metadata=data_md
    )
    task_id = submitted.task.task_id
    failed: list[webhook_service_pb2.Delivery] = []

    async def delivery_failed() -> bool:
        page = await hooks.ListDeliveries(
            webhook_service_pb2.ListDeliveriesRequest(
                webhook_id=webhook_id, statuses=[webhook_service_pb2.DELIVERY_STATUS_FAILED]
            ),
            metadata=data_md,
        )
        failed[:] = page.deliveries
        return bool(failed)

    await eventually(delivery_failed, timeout_s=10)
    await hooks.UpdateWebhook(
        webhook_service_pb2.UpdateWebhookRequest(
            webhook=webhook_service_pb2.Webhook(webhook_id=webhook_id, enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
        metadata=data_md,
    )
    background_responses = {
        "SubmitIngestion": submitted,
        "GetTask": await tasks.GetTask(
            task_service_pb2.GetTaskRequest(task_id=task_id), metadata=data_md
        ),
        "ListTasks": await tasks.ListTasks(task_service_pb2.ListTasksRequest(), metadata=data_md),
        "CancelTask": await _cancel_response(tasks, data_md),
        "CreateWebhook": created_hook,
        "GetWebhook": await hooks.GetWebhook(
            webhook_service_pb2.GetWebhookRequest(webhook_id=webhook_id), metadata=data_md
        ),
        "ListWebhooks": await hooks.ListWebhooks(
            webhook_service_pb2.ListWebhooksRequest(), metadata=data_md
        ),
        "UpdateWebhook": await hooks.UpdateWebhook(
            webhook_service_pb2.UpdateWebhookRequest(
                webhook=webhook_service_pb2.Webhook(webhook_id=webhook_id, description="d"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=data_md,
        ),
        "RotateWebhookSecret": await hooks.RotateWebhookSecret(
            webhook_service_pb2.RotateWebhookSecretRequest(webhook_id=webhook_id),
            metadata=data_md,
        ),
        "ListDeliveries": await hooks.ListDeliveries(
            webhook_service_pb2.ListDeliveriesRequest(webhook_id=webhook_id), metadata=data_md
        ),
        "RetryDelivery": await hooks.RetryDelivery(
            webhook_service_pb2.RetryDeliveryRequest(delivery_id=failed[0].delivery_id),
            metadata=data_md,
        ),
        "DeleteWebhook": await hooks.DeleteWebhook(
            webhook_service_pb2.DeleteWebhookRequest(webhook_id=webhook_id), metadata=data_md
        ),
    }
    responses = {
        **data_responses,
        **background_responses,
        "GetOrganization": await organization_service_pb2_grpc.OrganizationServiceStub(
            tenant.channel
        ).GetOrganization(organization_service_pb2.GetOrganizationRequest(), metadata=md),
        "SetKeyIdlePolicy": await organization_service_pb2_grpc.OrganizationServiceStub(
            tenant.channel
        ).SetKeyIdlePolicy(
            organization_service_pb2.SetKeyIdlePolicyRequest(
                policy=organization_service_pb2.KeyIdlePolicy(idle_days=3650)
            ),
            metadata=md,
        ),
        "GetKeyIdlePolicy": await organization_service_pb2_grpc.OrganizationServiceStub(
            tenant.channel
        ).GetKeyIdlePolicy(organization_service_pb2.GetKeyIdlePolicyRequest(), metadata=md),
        "CreateKey": created,
        "SetKeyBinding": await k.SetKeyBinding(
            key_service_pb2.SetKeyBindingRequest(
                key_id=created.key.key_id, bound_peers=["spiffe://meshgate.local/client/dev"]
            ),
            metadata=md,
        ),
        "SetKeyRateLimit": await k.SetKeyRateLimit(
            key_service_pb2.SetKeyRateLimitRequest(
                key_id=created.key.key_id,
                rate_limit=key_service_pb2.RateLimit(per_second=5, burst=10, dry_run=True),
            ),
            metadata=md,
        ),
        "GetKey": await k.GetKey(
            key_service_pb2.GetKeyRequest(key_id=created.key.key_id), metadata=md
        ),
        "ListKeys": await k.ListKeys(key_service_pb2.ListKeysRequest(), metadata=md),
        "RotateKey": await k.RotateKey(
            key_service_pb2.RotateKeyRequest(
                key_id=created.key.key_id, grace_period=Duration(seconds=5)
            ),
            metadata=md,
        ),
        "RevokeKey": await k.RevokeKey(
            key_service_pb2.RevokeKeyRequest(key_id=created.key.key_id), metadata=md
        ),
        "CreateNamespace": namespace_service_pb2.CreateNamespaceResponse(namespace=ns),
        "GetNamespace": await n.GetNamespace(
            namespace_service_pb2.GetNamespaceRequest(), metadata=auth(tenant.admin, ns.name)
        ),
        "ListNamespaces": await n.ListNamespaces(
            namespace_service_pb2.ListNamespacesRequest(), metadata=md
        ),
        **await _backup_responses(tenant, data_md, needle),
        "DeleteNamespace": await n.DeleteNamespace(
            namespace_service_pb2.DeleteNamespaceRequest(), metadata=auth(tenant.admin, ns.name)
        ),
    }
    usage = usage_service_pb2_grpc.UsageServiceStub(tenant.channel)
    responses["GetUsage"] = await usage.GetUsage(usage_service_pb2.GetUsageRequest(), metadata=md)
    responses["GetCreditBalance"] = await usage.GetCreditBalance(
        usage_service_pb2.GetCreditBalanceRequest(), metadata=md
    )
    async with grpc.aio.secure_channel(
        f"localhost:{server.port}", client_credentials(pki, "internal")
    ) as internal:
        responses["GrantCredits"] = await usage_service_pb2_grpc.UsageServiceStub(
            internal
        ).GrantCredits(
            usage_service_pb2.GrantCreditsRequest(organization_id=tenant.organization_id, credits=5)
        )
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    listed = await audit.ListAuditEvents(audit_service_pb2.ListAuditEventsRequest(), metadata=md)
    assert listed.events  # the calls above were audited
    responses["ListAuditEvents"] = listed
    responses["VerifyAuditChain"] = await audit.VerifyAuditChain(
        audit_service_pb2.VerifyAuditChainRequest(), metadata=md
    )
    responses["DeepCheck"] = await health_service_pb2_grpc.HealthServiceStub(
        tenant.channel
    ).DeepCheck(health_service_pb2.DeepCheckRequest(), metadata=md)
    every = {m.full_name for s in descriptors() for m in s.methods} - {RESOLVER}
    assert {p.rsplit(".", 1)[1] for p in every} == set(responses)
    for name, response in responses.items():
        assert needle not in response.SerializeToString(), name
    # the events the receiver got carry public ids only
    for request in receiver.requests("/internal-id"):
        assert org.internal_id not in str(request.payload)
    # error details too: a NOT_FOUND from another org's namespace
    try:
        await n.GetNamespace(
            namespace_service_pb2.GetNamespaceRequest(), metadata=auth(tenant.admin, "nope")
        )
    except grpc.aio.AioRpcError as error:
        assert org.internal_id not in (error.details() or "")
        assert all(org.internal_id not in str(v) for _, v in trailers_of(error))


async def _cancel_response(
    tasks: task_service_pb2_grpc.TaskServiceAsyncStub, md: Metadata
) -> task_service_pb2.CancelTaskResponse:
    """A CancelTask response: of a task still running, or FAILED_PRECONDITION's retry."""
    big = [document_service_pb2.Document(document_id=f"c{i}") for i in range(1000)]
    task = await tasks.SubmitIngestion(
        task_service_pb2.SubmitIngestionRequest(documents=big), metadata=md
    )
    try:
        return await tasks.CancelTask(
            task_service_pb2.CancelTaskRequest(task_id=task.task.task_id), metadata=md
        )
    except grpc.aio.AioRpcError as error:  # finished already: the API answered without a body
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        return task_service_pb2.CancelTaskResponse()


async def _backup_responses(tenant: Tenant, data_md: Metadata, needle: bytes) -> dict[str, Message]:
    """ExportNamespace's last message and ImportNamespace's response; every exported message,
    and the file they make, checked here too."""
    n = tenant.namespaces
    exported = [
        m
        async for m in n.ExportNamespace(
            namespace_service_pb2.ExportNamespaceRequest(), metadata=data_md
        )
    ]
    data = b"".join(m.data for m in exported)
    assert needle not in gzip.decompress(data)
    assert all(needle not in m.SerializeToString() for m in exported)
    target = await tenant.namespace()

    async def chunks() -> AsyncIterator[namespace_service_pb2.ImportNamespaceRequest]:
        yield namespace_service_pb2.ImportNamespaceRequest(data=data)

    imported = await n.ImportNamespace(chunks(), metadata=auth(tenant.admin, target.name))
    return {"ExportNamespace": exported[-1], "ImportNamespace": imported}
