"""UsageService through the real server: usage follows the caller's environment and allow-list."""

from __future__ import annotations

import secrets

from meshgate.v1 import (
    common_pb2,
    namespace_service_pb2,
    options_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from server.backends import Backends
from tests.support.clients import auth
from tests.support.namespace_clients import Docs, doc
from tests.support.tenants import Tenant, admin_of_environment


async def test_usage_follows_the_callers_environment_and_allow_list(
    tenant: Tenant, backends: Backends
) -> None:
    """The review: the same restricted development key saw production namespaces in its
    usage rows."""
    prod = await admin_of_environment(tenant, backends, "production")
    prod_ns = (
        await tenant.namespaces.CreateNamespace(
            namespace_service_pb2.CreateNamespaceRequest(
                name=f"prod-{secrets.token_hex(3)}",
                environment=common_pb2.ENVIRONMENT_PRODUCTION,
            ),
            metadata=auth(prod),
        )
    ).namespace
    ns_a, ns_b = await tenant.namespace(), await tenant.namespace()
    restricted = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(ns_a.name,))
    await Docs(tenant, prod_ns.name, prod).create(doc("p"))
    await Docs(tenant, ns_a.name).create(doc("a"))
    await Docs(tenant, ns_b.name).create(doc("b"))
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
