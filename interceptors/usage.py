"""Usage observer: every finished call on an API-key method is counted for analytics.

A debit whose call then failed on the server's side (INTERNAL, UNAVAILABLE)
is refunded; anything else the caller asked for is charged, refused or not.

Each call is counted under its key and its outcome (storage/core/outcomes.py, from
the status and the ErrorInfo reason), in the organization the key belongs to: the
caller's, a stored key's that may no longer be used (revoked, expired, disabled,
rotated out), or a valid key's refused for the peer presenting it. A call whose key
is unknown, malformed or missing has no organization: it is counted unattributed
(storage/metering/usage.py, `UNATTRIBUTED`), never under anything the caller sent.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from calls.policy import Access, Policy
from calls.state import CallState
from storage.core.outcomes import outcome_of
from storage.metering.usage import UNATTRIBUTED

__all__ = ["CreditCompletions", "UsageCounts", "UsageObserver"]

_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE})


class UsageCounts(Protocol):
    """Where finished calls are counted: `UsageRecorder`, or an in-memory one
    (tests/support/fakes)."""

    def record(
        self,
        *,
        organization_id: str,
        environment: str,
        namespace_id: str,
        method: str,
        key_id: str,
        outcome: str,
        status: str,
        credits: int,
        rate_limited: bool,
        at: float | None = None,
    ) -> None: ...


class CreditCompletions(Protocol):
    """How a debit is settled once its call is over: `CreditAccounts`, or an in-memory one."""

    def complete(
        self, organization_id: str, cost: int, *, refund: bool, at: float | None = None
    ) -> None: ...


class UsageObserver:
    def __init__(self, *, usage: UsageCounts, accounts: CreditCompletions) -> None:
        self._usage = usage
        self._accounts = accounts

    @staticmethod
    def observes(policy: Policy) -> bool:
        return policy.access is Access.API_KEY  # the calls with a caller to count

    def finish(self, call: CallState, duration_s: float) -> None:
        principal = call.principal
        credits = 0
        if principal is not None:
            organization_id = principal.organization.organization_id
            key_id, environment = principal.key.key_id, principal.key.environment
            credits = call.credits
            if credits:
                refund = call.code in _SERVER_FAULTS
                self._accounts.complete(organization_id, credits, refund=refund, at=call.started_at)
                credits = 0 if refund else credits
        else:
            owner = call.key or call.refused_key or call.unusable_key
            if owner is not None:
                organization_id, key_id = owner.organization_id, owner.key_id
                environment = owner.environment
            else:
                organization_id, key_id, environment = UNATTRIBUTED, UNATTRIBUTED, ""
        self._usage.record(
            organization_id=organization_id,
            environment=environment,
            namespace_id=call.namespace.namespace_id if call.namespace else "",
            method=call.method,
            key_id=key_id,
            outcome=outcome_of(call.code.name, call.reason),
            status=call.code.name,
            credits=credits,
            rate_limited=call.rate_limited,
            at=call.started_at,
        )
