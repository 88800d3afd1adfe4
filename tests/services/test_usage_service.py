"""UsageService through the real server: usage follows the caller's environment and allow-list."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import (
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from server.app import RunningServer
from server.backends import Backends
from tests.support.clients import auth
from tests.support.namespace_clients import Docs, doc, spread_across_environments
from tests.support.pki import Pki
from tests.support.tenants import Tenant


async def test_usage_follows_the_callers_environment_and_allow_list(
    tenant: Tenant, backends: Backends
) -> None:
    """The review: the same restricted development key saw production namespaces in its
    usage rows. It sees only calls by keys within its reach: its own, not the unrestricted
    ADMIN key's (in its namespace too)."""
    prod, prod_ns, ns_a, ns_b, restricted = await spread_across_environments(
        tenant, backends, ids=("p", "a", "b")
    )
    await Docs(tenant, ns_a.name, restricted.secret).create(doc("own"))
    usage = usage_service_pb2_grpc.UsageServiceStub(tenant.channel)

    async def namespaces_in_usage(secret: str) -> set[str]:
        response = await usage.GetUsage(
            usage_service_pb2.GetUsageRequest(group_by=[usage_service_pb2.USAGE_GROUP_NAMESPACE]),
            metadata=auth(secret),
        )
        return {row.namespace_id for row in response.rows}

    assert await namespaces_in_usage(restricted.secret) == {ns_a.namespace_id}
    assert await namespaces_in_usage(tenant.admin) == {"", ns_a.namespace_id, ns_b.namespace_id}
    assert await namespaces_in_usage(prod) == {"", prod_ns.namespace_id}


async def test_grant_credits_is_internal_only(
    tenant: Tenant, server: RunningServer, pki: Pki
) -> None:
    from tests.support.clients import client_credentials

    request = usage_service_pb2.GrantCreditsRequest(
        organization_id=tenant.organization_id, credits=100
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await usage_service_pb2_grpc.UsageServiceStub(tenant.channel).GrantCredits(
            request, metadata=auth(tenant.admin)
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.secure_channel(
        f"localhost:{server.port}", client_credentials(pki, "internal")
    ) as channel:
        stub = usage_service_pb2_grpc.UsageServiceStub(channel)
        granted = await stub.GrantCredits(request)
        assert granted.balance.granted == 100
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GrantCredits(
                usage_service_pb2.GrantCreditsRequest(
                    organization_id=tenant.organization_id, credits=0
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_usage_filters_by_at_most_100_keys(tenant: Tenant) -> None:
    usage = usage_service_pb2_grpc.UsageServiceStub(tenant.channel)
    key_ids = [f"key_{i:020d}" for i in range(101)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await usage.GetUsage(
            usage_service_pb2.GetUsageRequest(key_ids=key_ids), metadata=auth(tenant.admin)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 100 keys" in (refused.value.details() or "")
    await usage.GetUsage(
        usage_service_pb2.GetUsageRequest(key_ids=key_ids[:100]), metadata=auth(tenant.admin)
    )
