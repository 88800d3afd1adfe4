"""AuditService through the real server: what VerifyAuditChain reports about the chain's
end, and an organization-wide view that follows the caller's environment and allow-list."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    common_pb2,
)

from server.backends import Backends
from tests.support.clients import auth
from tests.support.namespace_clients import spread_across_environments
from tests.support.tenants import Tenant


async def test_verify_reports_the_chains_end_and_sees_it_deleted(
    tenant: Tenant, backends: Backends
) -> None:
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    md = auth(tenant.admin)
    for _ in range(3):
        await tenant.namespace()
    verdict = await audit.VerifyAuditChain(audit_service_pb2.VerifyAuditChainRequest(), metadata=md)
    assert verdict.intact
    assert verdict.last_sequence == verdict.events_checked == verdict.anchored_sequence >= 3
    newest = (
        await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(page_size=5), metadata=md
        )
    ).events
    at_end = [e for e in newest if e.sequence == verdict.last_sequence]
    assert [e.hash for e in at_end] == [verdict.last_hash]
    # an insider deletes the organization's whole chain
    await backends.mongo.database["audit_blocks"].delete_many(
        {"organization_id": tenant.organization_id}
    )
    verdict = await audit.VerifyAuditChain(audit_service_pb2.VerifyAuditChainRequest(), metadata=md)
    assert not verdict.intact
    assert "newest events were removed" in verdict.reason
    assert verdict.anchored_sequence > verdict.last_sequence


async def listed(tenant: Tenant, secret: str) -> list[audit_service_pb2.AuditEvent]:
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    events: list[audit_service_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(page_size=200, page_token=token),
            metadata=auth(secret),
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def test_audit_views_follow_the_callers_environment_and_allow_list(
    tenant: Tenant, backends: Backends
) -> None:
    """The review: a development ADMIN key restricted to one namespace saw a production
    CreateDocument event. Now each key lists only events of its environment (and of its
    namespaces), and only a key without an allow-list may verify the whole chain."""
    prod, _prod_ns, ns_a, _ns_b, restricted = await spread_across_environments(
        tenant, backends, ids=("secret-plan", "in-a", "in-b")
    )

    seen = await listed(tenant, restricted.secret)
    assert {e.resource for e in seen if e.method.endswith("CreateDocument")} == {"in-a"}
    assert {e.namespace_id for e in seen} == {ns_a.namespace_id}
    development = await listed(tenant, tenant.admin)
    created = {e.resource for e in development if e.method.endswith("CreateDocument")}
    assert created == {"in-a", "in-b"}
    assert {e.environment for e in development} == {common_pb2.ENVIRONMENT_DEVELOPMENT}
    production = await listed(tenant, prod)
    assert {e.resource for e in production if e.method.endswith("CreateDocument")} == {
        "secret-plan"
    }
    assert {e.environment for e in production} == {common_pb2.ENVIRONMENT_PRODUCTION}

    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await audit.VerifyAuditChain(
            audit_service_pb2.VerifyAuditChainRequest(), metadata=auth(restricted.secret)
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    verdict = await audit.VerifyAuditChain(
        audit_service_pb2.VerifyAuditChainRequest(), metadata=auth(tenant.admin)
    )
    assert verdict.intact  # environments mixed in one chain, the environment hashed in
