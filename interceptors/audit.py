"""Step 10, audit: write, delete and admin calls, and every denial by the request path.

As a step it refuses an audited call up front (UNAVAILABLE) when the audit
queue is full; as an observer it queues one event per audited call with who
(key, peer), what (method, resource), where (organization, namespace), the
outcome and the request id; and the environment of the actor's key, by which
organization-wide views are filtered. Events go to a per-organization hash chain
(storage/audit/log.py); the call never waits for that write.

Calls whose organization is unknown (no valid key) cannot join an
organization's chain: they are counted in the metrics and access log instead.
A valid key refused for its peer (a workload-bound key presented elsewhere)
is known, and its denial joins its organization's chain with the peer that
presented it.
Rate-limit and credit refusals are counted in usage analytics, not audited.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext

__all__ = ["AuditQueue", "AuditTrail", "audited"]

_ALWAYS = frozenset({"write", "delete", "admin"})
_NOT_DENIALS = frozenset({grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED})
_RESOURCE_FIELDS = ("key_id", "document_id", "organization_id")


def audited(policy: Policy) -> bool:
    return policy.audit or policy.permission in _ALWAYS


class AuditQueue(Protocol):
    """Where audit events wait for their write: `AuditLog`, or an in-memory one
    (tests/support/fakes)."""

    def check_room(self) -> None: ...

    def record(self, **fields: Any) -> None: ...


class AuditTrail:
    def __init__(self, *, log: AuditQueue) -> None:
        self._log = log

    @staticmethod
    def applies(policy: Policy) -> bool:
        """As a step: the audited methods, refused up front when the audit queue is full."""
        return audited(policy)

    @staticmethod
    def observes(policy: Policy) -> bool:
        """As an observer: API-key methods (an audited call, or any call denied)."""
        return policy.access is Access.API_KEY

    def check(self, call: CallState, context: PeerContext) -> None:
        self._log.check_room()

    def finish(self, call: CallState, duration_s: float) -> None:
        principal = call.principal
        if principal is not None:
            key, organization_id = principal.key, principal.organization.organization_id
        elif call.refused_key is not None:
            key, organization_id = call.refused_key, call.refused_key.organization_id
        else:
            return
        denied = not call.admitted and call.code not in _NOT_DENIALS
        if not (denied or audited(call.policy)):
            return
        self._log.record(
            actor_key_id=key.key_id,
            actor_peer=call.peer_identity or "",
            organization_id=organization_id,
            environment=key.environment,
            namespace_id=call.namespace.namespace_id if call.namespace else "",
            method=call.method,
            resource=call.resource or _resource_of(call.request),
            outcome=call.code.name,
            request_id=call.request_id,
            peer_address=call.peer_address,
        )


def _resource_of(request: object) -> str:
    for name in _RESOURCE_FIELDS:
        value = getattr(request, name, "")
        if isinstance(value, str) and value:
            return value
    return ""
