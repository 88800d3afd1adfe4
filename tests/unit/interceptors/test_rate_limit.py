"""Step 8, rate limit, in-process: the limiter's leases on an in-memory Redis; the plan's
bucket per route class, a key's own limit narrowing it, RESOURCE_EXHAUSTED with a retry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.metrics import Metrics
from interceptors.rate_limit import RateLimit
from storage.core.errors import ResourceExhaustedError
from storage.core.plans import Limit, Plan
from storage.metering.rate_limiter import RateLimiter
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.organizations import Organization
from tests.support.fakes import FakeLeaseRedis
from tests.support.request_path import Context, call_state

SEARCH = Policy(access=Access.API_KEY, permission="read", rate_class="search")
PLAN = Plan(
    name="test",
    monthly_credits=1000,
    limits={
        name: Limit(per_second=0.01, burst=3) for name in ("metadata", "data", "search", "admin")
    },
)


def caller(*, key_id: str = "key_" + "k" * 20, own: Limit | None = None) -> CallState:
    call = call_state(SEARCH)
    key = VerifiedKey(
        key_id=key_id,
        organization_id="org_" + "o" * 20,
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=frozenset(),
        valid_until=None,
        rate_limit=own,
    )
    organization = Organization("internal", "org_" + "o" * 20, "acme", "test", datetime.now(UTC))
    call.principal = Principal(key=key, organization=organization)
    return call


def step() -> tuple[RateLimit, FakeLeaseRedis, Metrics]:
    redis, metrics = FakeLeaseRedis(), Metrics()
    return (
        RateLimit(limiter=RateLimiter(redis=redis), plan_of=lambda _: PLAN, metrics=metrics),
        redis,
        metrics,
    )


async def admit(limit: RateLimit, call: CallState) -> dict[str, str]:
    pending = limit.check(call, Context())
    if pending is not None:
        await pending
    return dict(call.response_metadata)


async def test_the_plans_burst_is_admitted_then_refused_with_a_retry() -> None:
    limit, redis, metrics = step()
    remaining = [int((await admit(limit, caller()))["ratelimit-remaining"]) for _ in range(3)]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0
    refused = caller()
    with pytest.raises(
        ResourceExhaustedError, match="rate limit exceeded for search calls"
    ) as raised:
        await admit(limit, refused)
    assert raised.value.retry_after_s and raised.value.retry_after_s > 1
    assert refused.rate_limited and dict(refused.response_metadata)["ratelimit-limit"] == "3"
    bucket = limit.bucket_name("org_" + "o" * 20, "", "search")
    assert redis.tokens(bucket) == pytest.approx(0, abs=0.01)
    counted = metrics.registry.get_sample_value(
        "meshgate_rate_limited_total", {"plan": "test", "rate_class": "search"}
    )
    assert counted == 1


async def test_a_keys_own_limit_narrows_the_plans_and_spends_both() -> None:
    limit, redis, _ = step()
    own = Limit(per_second=0.01, burst=1)
    assert (await admit(limit, caller(own=own)))["ratelimit-limit"] == "1"
    with pytest.raises(ResourceExhaustedError):
        await admit(limit, caller(own=own))
    # the organization's bucket paid for the key's call: two left for every other key
    await admit(limit, caller(key_id="key_" + "b" * 20))
    await admit(limit, caller(key_id="key_" + "c" * 20))
    with pytest.raises(ResourceExhaustedError):
        await admit(limit, caller(key_id="key_" + "d" * 20))
    key_bucket = limit.bucket_name("org_" + "o" * 20, "key_" + "k" * 20, "search")
    assert redis.tokens(key_bucket) == pytest.approx(0, abs=0.01)


async def test_while_redis_is_down_the_local_fallback_holds_the_limit() -> None:
    limit, redis, _ = step()
    redis.down = True
    await admit(limit, caller())  # the refill fails: the limiter falls back
    for _ in range(2):
        await admit(limit, caller())
    with pytest.raises(ResourceExhaustedError):
        await admit(limit, caller())
    assert limit.limiter.fallbacks >= 3
