"""UsageService: usage analytics, credit balance, and (internal) credit grants."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from meshgate.v1 import usage_service_pb2 as pb
from meshgate.v1 import usage_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import checked_organization_id, from_timestamp, timestamp
from storage.core.clock import utc_now
from storage.core.errors import InvalidArgumentError
from storage.core.plans import Plan
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import Balance, CreditAccounts
from storage.metering.usage import UsageRecorder
from storage.tenancy.organizations import OrganizationStore

__all__ = ["UsageServicer"]

MAX_RANGE = timedelta(days=93)
MAX_GRANT = 1_000_000_000
_GROUPS = {
    pb.USAGE_GROUP_NAMESPACE: "namespace",
    pb.USAGE_GROUP_METHOD: "method",
    pb.USAGE_GROUP_DAY: "day",
    pb.USAGE_GROUP_HOUR: "hour",
}


def balance_to_proto(balance: Balance) -> pb.CreditBalance:
    return pb.CreditBalance(
        period=balance.period,
        allowance=balance.allowance,
        granted=balance.granted,
        used=balance.used,
        reserved=balance.reserved,
        remaining=balance.remaining,
    )


class UsageServicer(pb_grpc.UsageServiceServicer):
    def __init__(
        self,
        *,
        usage: UsageRecorder,
        accounts: CreditAccounts,
        organizations: OrganizationStore,
        grants: CreditEvents,
        plan_of: Callable[[str], Plan],
    ) -> None:
        self._usage = usage
        self._accounts = accounts
        self._organizations = organizations
        self._grants = grants
        self._plan_of = plan_of

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        principal = current_call.get().require_principal()
        end = from_timestamp(request.end_time) if request.HasField("end_time") else utc_now()
        start = (
            from_timestamp(request.start_time)
            if request.HasField("start_time")
            else end - timedelta(days=1)
        )
        if start >= end:
            raise InvalidArgumentError("start_time must be before end_time", field="start_time")
        if end - start > MAX_RANGE:
            raise InvalidArgumentError(
                "the time range may span at most 93 days", field="start_time"
            )
        groups = []
        for value in request.group_by:
            group = _GROUPS.get(value)
            if group is None:
                raise InvalidArgumentError(
                    "group_by takes USAGE_GROUP_NAMESPACE, _METHOD, _DAY or _HOUR", field="group_by"
                )
            groups.append(group)
        if "day" in groups and "hour" in groups:
            raise InvalidArgumentError(
                "group by USAGE_GROUP_DAY or USAGE_GROUP_HOUR, not both", field="group_by"
            )
        await self._usage.flush()  # this replica's last second; others flush every second
        rows = await self._usage.query(
            organization_id=principal.organization.organization_id,
            environment=principal.key.environment,
            only_namespaces=principal.key.namespace_ids,
            start=start,
            end=end,
            group_by=tuple(groups),
        )
        return pb.GetUsageResponse(
            rows=[
                pb.UsageRow(
                    namespace_id=row.namespace_id or "",
                    method=row.method or "",
                    start_time=timestamp(row.start),
                    calls=row.calls,
                    credits=row.credits,
                    rate_limited=row.rate_limited,
                    calls_by_status=row.by_status,
                )
                for row in rows
            ]
        )

    async def GetCreditBalance(
        self, request: pb.GetCreditBalanceRequest, context: Any
    ) -> pb.GetCreditBalanceResponse:
        organization = current_call.get().require_principal().organization
        balance = await self._accounts.balance(
            organization.organization_id,
            allowance=self._plan_of(organization.plan).monthly_credits,
        )
        return pb.GetCreditBalanceResponse(balance=balance_to_proto(balance))

    async def GrantCredits(
        self, request: pb.GrantCreditsRequest, context: Any
    ) -> pb.GrantCreditsResponse:
        checked_organization_id(request.organization_id)
        if not 1 <= request.credits <= MAX_GRANT:
            raise InvalidArgumentError(
                f"credits must be between 1 and {MAX_GRANT}", field="credits"
            )
        organization = await self._organizations.get(request.organization_id)
        period = self._accounts.current_period()
        # the ledger first: a Redis rebuilt from it has the grant, and Redis adds it once
        grant_id = await self._grants.record_grant(
            organization.organization_id,
            period,
            request.credits,
            by=current_call.get().peer_identity or "",
        )
        balance = await self._accounts.grant(
            organization.organization_id,
            request.credits,
            allowance=self._plan_of(organization.plan).monthly_credits,
            grant_id=grant_id,
            period=period,
        )
        return pb.GrantCreditsResponse(balance=balance_to_proto(balance))
