"""UsageService through the real server: usage follows the caller's environment and allow-list."""

from __future__ import annotations

from meshgate.v1 import (
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from server.backends import Backends
from tests.support.clients import auth
from tests.support.namespace_clients import Docs, doc, spread_across_environments
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
