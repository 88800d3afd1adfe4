"""Step 9, credits: the method's declared cost, debited before any work is done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext
from interceptors.metrics import Metrics
from storage.core.plans import Plan
from storage.tenancy.organizations import Organization

__all__ = ["CreditDebits", "Credits"]


class CreditDebits(Protocol):
    """How the step debits: `CreditAccounts`, or an in-memory one (tests/support/fakes)."""

    def try_debit(self, organization_id: str, cost: int, *, at: float | None = None) -> bool: ...

    async def debit(
        self, organization_id: str, cost: int, *, allowance: int, at: float | None = None
    ) -> None: ...


class Credits:
    def __init__(
        self,
        *,
        accounts: CreditDebits,
        plan_of: Callable[[str], Plan],
        metrics: Metrics | None = None,
    ) -> None:
        self._accounts = accounts
        self._plan_of = plan_of
        self._metrics = metrics
        self._counters: dict[str, Any] = {}  # plan -> its labelled counter

    @staticmethod
    def applies(policy: Policy) -> bool:
        return policy.cost > 0 and policy.access is Access.API_KEY

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None:
        cost = call.policy.cost
        organization = call.require_principal().organization
        if not self._accounts.try_debit(organization.organization_id, cost, at=call.started_at):
            return self._debit(call, organization, cost)
        self._debited(call, organization, cost)
        return None

    async def _debit(self, call: CallState, organization: Organization, cost: int) -> None:
        allowance = self._plan_of(organization.plan).monthly_credits
        await self._accounts.debit(
            organization.organization_id, cost, allowance=allowance, at=call.started_at
        )
        self._debited(call, organization, cost)

    def _debited(self, call: CallState, organization: Organization, cost: int) -> None:
        call.credits = cost
        if self._metrics is not None:
            # the plan the debit followed (a name of the plan table: a bounded label)
            plan = self._plan_of(organization.plan).name
            counter = self._counters.get(plan)
            if counter is None:
                counter = self._counters[plan] = self._metrics.credits_debited.labels(plan)
            counter.inc(cost)
