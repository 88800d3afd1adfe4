"""The usage observer through the real server: every call of a known caller counted, by
namespace, method, status and day, rate-limited ones included; the balance follows."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import (
    common_pb2,
    document_service_pb2,
    document_service_pb2_grpc,
    key_service_pb2,
    options_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from server.app import RunningServer
from tests.support.clients import auth
from tests.support.tenants import MakeTenant, Tenant, burst_calls


async def test_usage_reports_calls_credits_statuses_and_rejections(
    make_tenant: MakeTenant, server: RunningServer
) -> None:
    tenant: Tenant = await make_tenant(plan="free")
    ns = await tenant.namespace()
    docs = document_service_pb2_grpc.DocumentServiceStub(tenant.channel)
    md = auth(tenant.admin, ns.name)
    for i in range(3):
        await docs.CreateDocument(
            document_service_pb2.CreateDocumentRequest(
                document=document_service_pb2.Document(document_id=f"u{i}")
            ),
            metadata=md,
        )
    with pytest.raises(grpc.aio.AioRpcError):
        await docs.GetDocument(
            document_service_pb2.GetDocumentRequest(document_id="missing"), metadata=md
        )
    # a key with a small bucket of its own, refilling slowly: 45 calls one after another
    # exceed its burst of 5 however slow the machine is, and the refused ones take nothing
    # from the organization's bucket (40), so the admin key stays usable
    burster = await tenant.keys.CreateKey(
        key_service_pb2.CreateKeyRequest(
            name="burst",
            environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
            permissions=[options_pb2.PERMISSION_READ],
            rate_limit=key_service_pb2.RateLimit(per_second=1, burst=5),
        ),
        metadata=auth(tenant.admin),
    )
    await burst_calls(tenant, burster.secret, 45)
    usage = usage_service_pb2_grpc.UsageServiceStub(tenant.channel)
    response = await usage.GetUsage(
        usage_service_pb2.GetUsageRequest(
            group_by=[usage_service_pb2.USAGE_GROUP_NAMESPACE, usage_service_pb2.USAGE_GROUP_METHOD]
        ),
        metadata=auth(tenant.admin),
    )
    rows = {(r.namespace_id, r.method.rsplit("/", 1)[1]): r for r in response.rows}
    create = rows[(ns.namespace_id, "CreateDocument")]
    assert (create.calls, create.credits, dict(create.calls_by_status)) == (3, 3, {"OK": 3})
    get = rows[(ns.namespace_id, "GetDocument")]
    assert (
        dict(get.calls_by_status) == {"NOT_FOUND": 1} and get.credits == 1
    )  # charged: a client error
    org_calls = rows[("", "GetOrganization")]
    assert (
        org_calls.calls == 45 and org_calls.rate_limited == 45 - org_calls.calls_by_status["OK"] > 0
    )
    by_day = await usage.GetUsage(
        usage_service_pb2.GetUsageRequest(group_by=[usage_service_pb2.USAGE_GROUP_DAY]),
        metadata=auth(tenant.admin),
    )
    assert len(by_day.rows) == 1 and by_day.rows[0].calls >= 49
    assert by_day.rows[0].start_time.ToDatetime().hour == 0
    for bad in (
        usage_service_pb2.GetUsageRequest(group_by=[usage_service_pb2.USAGE_GROUP_UNSPECIFIED]),
        usage_service_pb2.GetUsageRequest(
            group_by=[usage_service_pb2.USAGE_GROUP_DAY, usage_service_pb2.USAGE_GROUP_HOUR]
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await usage.GetUsage(bad, metadata=auth(tenant.admin))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the balance reflects the debits once settled
    await server.flush_usage()
    balance = await usage.GetCreditBalance(
        usage_service_pb2.GetCreditBalanceRequest(), metadata=auth(tenant.admin)
    )
    assert balance.balance.used == 4 and balance.balance.allowance == 10_000  # 3 creates + 1 get
    assert balance.balance.remaining + balance.balance.reserved == 10_000 - 4
