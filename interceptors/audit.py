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

What a rule in dry run would have refused (calls/dry_run.py) is an event of its own, its
outcome `DRY_RUN_<reason>` (`DRY_RUN_PERMISSION_DENIED_LEVEL`, `DRY_RUN_RATE_LIMITED`...),
so a tenant's admin sees which keys a coming policy would refuse. A rate limit in dry
run could otherwise write an event per call: at most one is written per key, method, rule
and reason every DRY_RUN_EVENT_INTERVAL_S (the counter and the access lines have every
one), the state for that bounded to DRY_RUN_EVENT_KEYS entries, and none while the audit
queue is full: a dry run never makes an audited call refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext
from storage.tenancy.key_verifier import VerifiedKey

__all__ = ["DRY_RUN_EVENT_INTERVAL_S", "DRY_RUN_EVENT_KEYS", "AuditQueue", "AuditTrail", "audited"]

DRY_RUN_EVENT_INTERVAL_S = 60.0
DRY_RUN_EVENT_KEYS = 10_000

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

    @property
    def saturated(self) -> bool:
        """Nearly full: events that may be skipped (dry-run denials) wait for room."""
        ...


class AuditTrail:
    def __init__(self, *, log: AuditQueue, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        # (organization, key, method, rule, reason) -> when its last dry-run event was queued
        self._dry_run_events: dict[tuple[str, ...], float] = {}

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
        if call.dry_run:
            self._record_dry_run(call, key=key, organization_id=organization_id)
        denied = not call.admitted and call.code not in _NOT_DENIALS
        if not (denied or audited(call.policy)):
            return
        self._record(call, key=key, organization_id=organization_id, outcome=call.code.name)

    def _record_dry_run(self, call: CallState, *, key: VerifiedKey, organization_id: str) -> None:
        for denial in call.dry_run:
            seen = (organization_id, key.key_id, call.method, denial.rule, denial.reason)
            if self._log.saturated or not self._due(seen):
                continue
            outcome = f"DRY_RUN_{denial.reason}"
            self._record(call, key=key, organization_id=organization_id, outcome=outcome)

    def _record(
        self, call: CallState, *, key: VerifiedKey, organization_id: str, outcome: str
    ) -> None:
        """One audit event of `call` by `key`, with `outcome`."""
        self._log.record(
            actor_key_id=key.key_id,
            actor_peer=call.peer_identity or "",
            organization_id=organization_id,
            environment=key.environment,
            namespace_id=call.namespace.namespace_id if call.namespace else "",
            method=call.method,
            resource=call.resource or _resource_of(call.request),
            outcome=outcome,
            request_id=call.request_id,
            peer_address=call.peer_address,
        )

    def _due(self, seen: tuple[str, ...]) -> bool:
        """Whether a key's dry-run denial of this kind (organization, key, method, rule,
        reason) is due an event: one every DRY_RUN_EVENT_INTERVAL_S."""
        now = self._clock()
        events = self._dry_run_events
        last = events.pop(seen, None)
        if last is not None and now - last < DRY_RUN_EVENT_INTERVAL_S:
            events[seen] = last  # the newest touched last: the oldest are dropped first
            return False
        if len(events) >= DRY_RUN_EVENT_KEYS:
            del events[next(iter(events))]
        events[seen] = now
        return True


def _resource_of(request: object) -> str:
    for name in _RESOURCE_FIELDS:
        value = getattr(request, name, "")
        if isinstance(value, str) and value:
            return value
    return ""
