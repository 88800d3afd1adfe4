"""Step 9, credits: the method's declared cost, debited before any work is done."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from interceptors.context import CallState
from interceptors.metrics import Metrics
from storage.credits import CreditAccounts
from storage.plans import Plan

__all__ = ["Credits"]


class Credits:
    def __init__(
        self,
        *,
        accounts: CreditAccounts,
        plan_of: Callable[[str], Plan],
        metrics: Metrics | None = None,
    ) -> None:
        self._accounts = accounts
        self._plan_of = plan_of
        self._metrics = metrics

    async def check(
        self, call: CallState, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        cost = call.policy.cost
        if cost <= 0 or call.principal is None:
            return
        organization = call.principal.organization
        allowance = self._plan_of(organization.plan).monthly_credits
        await self._accounts.debit(organization.organization_id, cost, allowance=allowance)
        call.credits = cost
        if self._metrics is not None:
            self._metrics.credits_debited.labels(organization.plan).inc(cost)
