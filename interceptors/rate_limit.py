"""Step 8, rate limit: per plan and route class (or per key, with an override), in Redis.

The bucket is the organization's for the method's route class
(`mg:{org_…}:rl:<class>`), or the key's own when the key carries a rate
override (`mg:{org_…}:rl:key_…:<class>`). Every admitted response carries
`ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset`; a refusal is
RESOURCE_EXHAUSTED with RetryInfo and `retry-after`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from interceptors.context import CallState
from interceptors.metrics import Metrics
from interceptors.policy import Access
from storage.backends.redis_keys import organization_key
from storage.core.errors import ResourceExhaustedError
from storage.core.plans import Limit, Plan
from storage.metering.rate_limiter import Decision, RateLimiter

__all__ = ["RateLimit"]


class RateLimit:
    def __init__(
        self,
        *,
        limiter: RateLimiter,
        plan_of: Callable[[str], Plan],
        metrics: Metrics | None = None,
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._plan_of = plan_of
        self._buckets: dict[tuple[str, str, str], str] = {}

    def check(
        self, call: CallState, context: grpc.aio.ServicerContext[object, object]
    ) -> Awaitable[None] | None:
        if call.policy.access is not Access.API_KEY or call.principal is None:
            return None
        principal = call.principal
        rate_class = call.policy.rate_class
        organization_id = principal.organization.organization_id
        override = principal.key.rate_limit
        owner = principal.key.key_id if override is not None else ""
        name = self._buckets.get((organization_id, owner, rate_class))
        if name is None:
            parts = ("rl", owner, rate_class) if owner else ("rl", rate_class)
            name = self._buckets[(organization_id, owner, rate_class)] = organization_key(
                organization_id, *parts
            )
        limit = override or self._plan_of(principal.organization.plan).limits[rate_class]
        decision = self._limiter.try_acquire(name, limit)
        if decision is None:
            return self._wait(call, name, limit)
        self._apply(call, decision)
        return None

    async def _wait(self, call: CallState, bucket: str, limit: Limit) -> None:
        self._apply(call, await self._limiter.acquire(bucket, limit))

    def _apply(self, call: CallState, decision: Decision) -> None:
        call.response_metadata.extend(decision.headers())
        if not decision.allowed:
            assert call.principal is not None
            plan, rate_class = call.principal.organization.plan, call.policy.rate_class
            call.rate_limited = True
            if self._metrics is not None:
                self._metrics.rate_limited.labels(plan, rate_class).inc()
            raise ResourceExhaustedError(
                f"rate limit exceeded for {rate_class} calls;"
                f" retry in {decision.retry_after_s:.2f}s",
                retry_after_s=decision.retry_after_s,
            )
