"""Step 9, credits, in-process: the declared cost debited before any work; short is
RESOURCE_EXHAUSTED; what was debited is counted per plan."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.credits import Credits
from interceptors.metrics import Metrics
from storage.core.errors import ResourceExhaustedError
from storage.core.plans import Limit, Plan
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.organizations import Organization
from tests.support.fakes import FakeCreditAccounts
from tests.support.request_path import Context, call_state

SEARCH = Policy(access=Access.API_KEY, permission="read", cost=5, rate_class="search")
PLAN = Plan(
    name="small",
    monthly_credits=12,
    limits={name: Limit(per_second=1, burst=1) for name in ("metadata", "data", "search", "admin")},
)
ORGANIZATION = "org_" + "o" * 20


def caller(policy: Policy = SEARCH) -> CallState:
    call = call_state(policy)
    key = VerifiedKey(
        key_id="key_" + "k" * 20,
        organization_id=ORGANIZATION,
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=frozenset(),
        valid_until=None,
    )
    organization = Organization("internal", ORGANIZATION, "acme", "small", datetime.now(UTC))
    call.principal = Principal(key=key, organization=organization)
    return call


async def debit(credits: Credits, call: CallState) -> None:
    pending = credits.check(call, Context())
    if pending is not None:
        await pending


async def test_the_cost_is_debited_until_the_allowance_is_short() -> None:
    accounts, metrics = FakeCreditAccounts(), Metrics()
    credits = Credits(accounts=accounts, plan_of=lambda _: PLAN, metrics=metrics)
    calls = [caller(), caller()]
    for call in calls:
        await debit(credits, call)
        assert call.credits == 5
    refused = caller()
    with pytest.raises(ResourceExhaustedError, match="used up"):
        await debit(credits, refused)
    assert refused.credits == 0
    assert (
        metrics.registry.get_sample_value("meshgate_credits_debited_total", {"plan": "small"}) == 10
    )
    for call in calls:
        accounts.complete(ORGANIZATION, call.credits, refund=False, at=call.started_at)
    assert accounts.spent(ORGANIZATION) == 10


def test_only_costed_api_key_methods_pay() -> None:
    assert Credits.applies(SEARCH)
    assert not Credits.applies(Policy(access=Access.API_KEY, permission="read"))
    assert not Credits.applies(Policy(access=Access.INTERNAL_PEER, cost=5))
