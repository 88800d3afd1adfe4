"""UsageService: usage analytics, credit balance, and (internal) credit grants.

GetUsage counts the calls of the caller's environment made with keys within the
caller's reach (storage/tenancy/key_reach.py): a key with a namespace allow-list
sees only calls in its namespaces, by keys restricted to them; a bound key only
calls by keys bound within its binding. A key outside the caller's reach counts
nothing, whether named in `key_ids` or not, exactly as a key that made no calls.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from meshgate.v1 import usage_service_pb2 as pb
from meshgate.v1 import usage_service_pb2_grpc as pb_grpc

from calls.state import Principal, current_call
from services.convert import checked_organization_id, from_timestamp, timestamp
from storage.core.clock import utc_now
from storage.core.errors import InvalidArgumentError
from storage.core.ids import KEY_ID_RE
from storage.core.outcomes import Outcome
from storage.core.plans import Plan
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import Balance, CreditAccounts
from storage.metering.usage import UsageRecorder
from storage.tenancy.key_verifier import reach_of
from storage.tenancy.keys import KeyStore
from storage.tenancy.organizations import OrganizationStore

__all__ = ["UsageServicer"]

MAX_RANGE = timedelta(days=93)
MAX_GRANT = 1_000_000_000
MAX_KEY_FILTER = 100
_GROUPS = {
    pb.USAGE_GROUP_NAMESPACE: "namespace",
    pb.USAGE_GROUP_METHOD: "method",
    pb.USAGE_GROUP_DAY: "day",
    pb.USAGE_GROUP_HOUR: "hour",
    pb.USAGE_GROUP_KEY: "key",
    pb.USAGE_GROUP_OUTCOME: "outcome",
}
_OUTCOMES: dict[pb.UsageOutcome.ValueType, Outcome] = {
    pb.USAGE_OUTCOME_OK: Outcome.OK,
    pb.USAGE_OUTCOME_UNAUTHENTICATED: Outcome.UNAUTHENTICATED,
    pb.USAGE_OUTCOME_PERMISSION_DENIED: Outcome.PERMISSION_DENIED,
    pb.USAGE_OUTCOME_NOT_FOUND: Outcome.NOT_FOUND,
    pb.USAGE_OUTCOME_RATE_LIMITED: Outcome.RATE_LIMITED,
    pb.USAGE_OUTCOME_CREDITS_EXHAUSTED: Outcome.CREDITS_EXHAUSTED,
    pb.USAGE_OUTCOME_MALFORMED: Outcome.MALFORMED,
    pb.USAGE_OUTCOME_UNAVAILABLE: Outcome.UNAVAILABLE,
    pb.USAGE_OUTCOME_OTHER: Outcome.OTHER,
}
_OUTCOME_PROTOS = {outcome.value: value for value, outcome in _OUTCOMES.items()}


def _groups(request: pb.GetUsageRequest) -> tuple[str, ...]:
    groups = []
    for value in request.group_by:
        group = _GROUPS.get(value)
        if group is None:
            raise InvalidArgumentError(
                "group_by takes USAGE_GROUP_NAMESPACE, _METHOD, _DAY, _HOUR, _KEY or _OUTCOME",
                field="group_by",
            )
        groups.append(group)
    if "day" in groups and "hour" in groups:
        raise InvalidArgumentError(
            "group by USAGE_GROUP_DAY or USAGE_GROUP_HOUR, not both", field="group_by"
        )
    return tuple(groups)


def _filters(request: pb.GetUsageRequest) -> tuple[frozenset[str], frozenset[str]]:
    """The key ids and outcome names the request filters on (empty: no filter)."""
    if len(request.key_ids) > MAX_KEY_FILTER:
        raise InvalidArgumentError(
            f"key_ids may list at most {MAX_KEY_FILTER} keys", field="key_ids"
        )
    for index, key_id in enumerate(request.key_ids):
        if not KEY_ID_RE.match(key_id):
            raise InvalidArgumentError(
                "key_ids must be key ids (key_...)", field=f"key_ids[{index}]"
            )
    outcomes = set()
    for index, value in enumerate(request.outcomes):
        outcome = _OUTCOMES.get(value)
        if outcome is None:
            raise InvalidArgumentError(
                "outcomes takes the UsageOutcome values other than UNSPECIFIED",
                field=f"outcomes[{index}]",
            )
        outcomes.add(outcome.value)
    return frozenset(request.key_ids), frozenset(outcomes)


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
        keys: KeyStore,
        accounts: CreditAccounts,
        organizations: OrganizationStore,
        grants: CreditEvents,
        plan_of: Callable[[str], Plan],
    ) -> None:
        self._usage = usage
        self._keys = keys
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
        groups = _groups(request)
        key_ids, outcomes = _filters(request)
        await self._usage.flush()  # this replica's last second; others flush every second
        where: dict[str, Any] = {
            "organization_id": principal.organization.organization_id,
            "environment": principal.key.environment,
            "only_namespaces": principal.key.namespace_ids,
            "start": start,
            "end": end,
        }
        rows = await self._usage.query(
            **where,
            group_by=groups,
            key_ids=await self._keys_in_reach(principal, key_ids, outcomes, where),
            outcomes=outcomes,
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
                    key_id=row.key_id or "",
                    outcome=_OUTCOME_PROTOS.get(row.outcome or "", pb.USAGE_OUTCOME_UNSPECIFIED),
                )
                for row in rows
            ]
        )

    async def _keys_in_reach(
        self,
        principal: Principal,
        key_ids: frozenset[str],
        outcomes: frozenset[str],
        where: dict[str, Any],
    ) -> frozenset[str] | None:
        """The keys whose calls count: None means every key (the caller reaches every key
        of its environment and names none); otherwise those named, or else those that made
        calls in the range, that lie within the caller's reach."""
        reach = reach_of(principal.key)
        if reach.reaches_everything():
            return key_ids or None
        candidates = set(key_ids) or await self._usage.keys_in(**where, outcomes=outcomes)
        return await self._keys.within_reach(
            organization_id=principal.organization.organization_id,
            environment=principal.key.environment,
            reach=reach,
            key_ids=candidates,
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
