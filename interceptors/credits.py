"""Step 9, credits: the method's declared cost, debited before any work is done."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from interceptors.context import CallState
from storage.credits import CreditAccounts
from storage.plans import Plan

__all__ = ["Credits"]


class Credits:
    def __init__(self, *, accounts: CreditAccounts, plan_of: Callable[[str], Plan]) -> None:
        self._accounts = accounts
        self._plan_of = plan_of

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
