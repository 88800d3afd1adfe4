"""Usage observer: every finished call of an authenticated caller is counted for analytics.

A debit whose call then failed on the server's side (INTERNAL, UNAVAILABLE)
is refunded; anything else the caller asked for is charged, refused or not.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from calls.policy import Access, Policy
from calls.state import CallState

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
        if principal is None:
            return
        organization_id = principal.organization.organization_id
        credits = call.credits
        if credits:
            refund = call.code in _SERVER_FAULTS
            self._accounts.complete(organization_id, credits, refund=refund, at=call.started_at)
            credits = 0 if refund else credits
        self._usage.record(
            organization_id=organization_id,
            environment=principal.key.environment,
            namespace_id=call.namespace.namespace_id if call.namespace else "",
            method=call.method,
            status=call.code.name,
            credits=credits,
            rate_limited=call.rate_limited,
            at=call.started_at,
        )
