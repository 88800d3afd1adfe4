"""Step 9, credits, through the real server: a short balance refuses the call before it
does any work."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import (
    document_service_pb2,
    document_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from server.backends import Backends
from storage.backends.scoped import Scope
from storage.core.clock import utc_now
from storage.metering.credits import CreditAccounts, period_of
from storage.tenancy.organizations import OrganizationStore
from tests.support.clients import auth, trailers_of
from tests.support.tenants import Tenant


async def test_short_balance_refuses_before_any_work(tenant: Tenant, backends: Backends) -> None:
    ns = await tenant.namespace()
    usage = usage_service_pb2_grpc.UsageServiceStub(tenant.channel)
    await usage.GetCreditBalance(
        usage_service_pb2.GetCreditBalanceRequest(), metadata=auth(tenant.admin)
    )
    # leave the organization 2 credits this month (test set-up, straight in Redis)
    key = CreditAccounts.key(tenant.organization_id, period_of(utc_now()))
    await backends.redis.hset(key, mapping={"balance": 2, "allowance": 2})
    docs = document_service_pb2_grpc.DocumentServiceStub(tenant.channel)
    md = auth(tenant.admin, ns.name)

    def create(
        i: int,
    ) -> grpc.aio.UnaryUnaryCall[
        document_service_pb2.CreateDocumentRequest, document_service_pb2.CreateDocumentResponse
    ]:
        return docs.CreateDocument(
            document_service_pb2.CreateDocumentRequest(
                document=document_service_pb2.Document(document_id=f"d{i}")
            ),
            metadata=md,
        )

    await create(1)
    await create(2)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create(3)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "credits" in (info.value.details() or "")
    assert "retry-after" in dict(trailers_of(info.value))
    org = await OrganizationStore(mongo=backends.mongo).get(tenant.organization_id)
    stored = await backends.mongo.scoped(
        "documents", Scope(org.internal_id, ns.namespace_id)
    ).find()
    assert sorted(d["document_id"] for d in stored) == ["d1", "d2"]  # the third did no work
