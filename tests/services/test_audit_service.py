"""AuditService through the real server: what VerifyAuditChain reports about the chain's end."""

from __future__ import annotations

from meshgate.v1 import audit_service_pb2, audit_service_pb2_grpc

from server.backends import Backends
from tests.support.clients import auth
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
