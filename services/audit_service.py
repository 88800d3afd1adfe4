"""AuditService: the organization's audit trail and its chain verification.

A key lists only the events of its own environment, and a key with a
namespace allow-list only the events in those namespaces. The chain spans the
whole organization, so only a key without an allow-list may verify it; the
verdict carries sequence numbers, hashes and at most one event id, no event
content. A verification may bring a signed checkpoint it kept (the chain must
still hold its hash at its sequence), and takes away a new one of the chain's end
when the chain is intact (storage/audit/checkpoints.py).
"""

from __future__ import annotations

from typing import Any

from meshgate.v1 import audit_service_pb2 as pb
from meshgate.v1 import audit_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import environment_to_proto, from_timestamp, timestamp
from storage.audit.checkpoints import AuditCheckpoints
from storage.audit.log import AuditLog
from storage.core.checkpoints import Checkpoint
from storage.core.errors import FailedPreconditionError, PermissionDeniedError, Reason
from storage.core.pages import page_size

__all__ = ["AuditServicer"]


def event_to_proto(doc: dict[str, Any]) -> pb.AuditEvent:
    return pb.AuditEvent(
        event_id=doc["event_id"],
        sequence=doc["sequence"],
        time=timestamp(doc["time"]),
        actor_key_id=doc["actor_key_id"],
        actor_peer=doc["actor_peer"],
        organization_id=doc["organization_id"],
        namespace_id=doc["namespace_id"],
        method=doc["method"],
        resource=doc["resource"],
        outcome=doc["outcome"],
        request_id=doc["request_id"],
        peer_address=doc["peer_address"],
        previous_hash=doc["previous_hash"],
        hash=doc["hash"],
        environment=environment_to_proto(doc["environment"]),
    )


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, *, log: AuditLog, checkpoints: AuditCheckpoints | None = None) -> None:
        self._log = log
        self._checkpoints = checkpoints

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> pb.ListAuditEventsResponse:
        principal = current_call.get().require_principal()
        await self._log.flush()  # this replica's queue first, so a caller sees its own calls
        docs, token = await self._log.list_page(
            organization_id=principal.organization.organization_id,
            environment=principal.key.environment,
            only_namespaces=principal.key.namespace_ids,
            filters={
                "actor_key_id": request.actor_key_id,
                "action": request.action,
                "resource": request.resource,
                "namespace_id": request.namespace_id,
                "outcome": request.outcome,
            },
            start=from_timestamp(request.start_time) if request.HasField("start_time") else None,
            end=from_timestamp(request.end_time) if request.HasField("end_time") else None,
            page_size=page_size(request.page_size),
            page_token=request.page_token,
        )
        return pb.ListAuditEventsResponse(
            events=[event_to_proto(d) for d in docs], next_page_token=token
        )

    async def VerifyAuditChain(
        self, request: pb.VerifyAuditChainRequest, context: Any
    ) -> pb.VerifyAuditChainResponse:
        principal = current_call.get().require_principal()
        if principal.key.namespace_ids:
            raise PermissionDeniedError(
                "VerifyAuditChain needs a key without a namespace allow-list:"
                " the chain spans the whole organization",
                reason=Reason.KEY_SCOPE_INSUFFICIENT,
            )
        organization_id = principal.organization.organization_id
        kept = None
        if request.checkpoint:
            if self._checkpoints is None:
                raise FailedPreconditionError("this server signs no audit checkpoints")
            kept = self._checkpoints.open(request.checkpoint, organization_id)
        await self._log.flush()
        report = await self._log.verify(organization_id, kept=kept)
        signed = ""
        if report.intact and report.last_sequence and self._checkpoints is not None:
            signed = await self._checkpoints.publish(
                Checkpoint(organization_id, report.last_sequence, report.last_hash)
            )
        return pb.VerifyAuditChainResponse(
            intact=report.intact,
            events_checked=report.checked,
            first_broken_sequence=report.broken_sequence,
            first_broken_event_id=report.broken_event_id,
            reason=report.reason,
            last_sequence=report.last_sequence,
            last_hash=report.last_hash,
            anchored_sequence=report.anchored_sequence,
            checkpoint_holds=bool(report.checkpoint_holds),
            checkpoint=signed,
        )
