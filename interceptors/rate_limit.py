"""Step 8, rate limit: per plan and route class, in Redis; a key's own limit narrows it.

Every call of an organization draws from the organization's bucket for the
method's route class (`mg:{org_…}:rl:<class>`), with the plan's limit. A key
that carries its own `rate_limit` draws from its own bucket first
(`mg:{org_…}:rl:key_…:<class>`), whose limit is the smaller of the key's and
the plan's (rate and burst apart), and then from the organization's too: a key's
limit only ever narrows the plan's, and keys with limits of their own cannot
add up to more than the plan. Every admitted response carries
`ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset` of the tighter of
the two buckets; a refusal is RESOURCE_EXHAUSTED with RetryInfo and
`retry-after`.

Bucket names are kept for the `max_buckets` most recently made (the rate-limit
service names buckets from its callers' descriptors; beyond the cap the oldest
names are made again when next needed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext
from interceptors.metrics import Metrics
from storage.backends.redis_keys import organization_key
from storage.core.errors import Quota, Reason, ResourceExhaustedError
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
        max_buckets: int = 10_000,
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._plan_of = plan_of
        self._max_buckets = max_buckets
        # (organization_id, owner, rate class) -> bucket name, the oldest made dropped first
        self._buckets: dict[tuple[str, str, str], str] = {}

    @staticmethod
    def applies(policy: Policy) -> bool:
        return policy.access is Access.API_KEY

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None:
        principal = call.require_principal()
        rate_class = call.policy.rate_class
        organization_id = principal.organization.organization_id
        plan_limit = self._plan_of(principal.organization.plan).limits[rate_class]
        organization_bucket = self._bucket(organization_id, "", rate_class)
        override = principal.key.rate_limit
        if override is None:  # the common call: one bucket, nothing allocated
            decision = self._limiter.try_acquire(organization_bucket, plan_limit)
            if decision is None:
                return self._wait(call, [(organization_bucket, plan_limit)], [])
            self._apply(call, decision)
            return None
        buckets = [  # the key's own bucket first: it is the narrower one
            (
                self._bucket(organization_id, principal.key.key_id, rate_class),
                override.narrowed(plan_limit),
            ),
            (organization_bucket, plan_limit),
        ]
        decisions: list[Decision] = []
        for index, (name, limit) in enumerate(buckets):
            decision = self._limiter.try_acquire(name, limit)
            if decision is None:
                return self._wait(call, buckets[index:], decisions)
            if not decision.allowed:
                self._apply(call, decision)
            decisions.append(decision)
        self._apply(call, _tightest(decisions))
        return None

    def bucket_name(self, organization_id: str, owner: str, rate_class: str) -> str:
        """The Redis bucket of an organization's route class, or of one owner inside it (a
        key, a namespace): the rate-limit service draws from the very same buckets."""
        return self._bucket(organization_id, owner, rate_class)

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @property
    def cached_bucket_names(self) -> int:
        """Bucket names kept (at most `max_buckets`)."""
        return len(self._buckets)

    def _bucket(self, organization_id: str, owner: str, rate_class: str) -> str:
        names = self._buckets
        name = names.get((organization_id, owner, rate_class))
        if name is None:
            if len(names) >= self._max_buckets:
                del names[next(iter(names))]
            parts = ("rl", owner, rate_class) if owner else ("rl", rate_class)
            name = names[(organization_id, owner, rate_class)] = organization_key(
                organization_id, *parts
            )
        return name

    async def _wait(
        self, call: CallState, buckets: list[tuple[str, Limit]], decisions: list[Decision]
    ) -> None:
        for name, limit in buckets:
            decision = await self._limiter.acquire(name, limit)
            if not decision.allowed:
                self._apply(call, decision)
            decisions.append(decision)
        self._apply(call, _tightest(decisions))

    def _apply(self, call: CallState, decision: Decision) -> None:
        call.response_metadata = decision.headers()
        if not decision.allowed:
            assert call.principal is not None
            # the plan the limit came from (a name of the plan table: a bounded label)
            plan = self._plan_of(call.principal.organization.plan).name
            rate_class = call.policy.rate_class
            call.rate_limited = True
            if self._metrics is not None:
                self._metrics.rate_limited.labels(plan, rate_class).inc()
            raise ResourceExhaustedError(
                f"rate limit exceeded for {rate_class} calls;"
                f" retry in {decision.retry_after_s:.2f}s",
                retry_after_s=decision.retry_after_s,
                reason=Reason.RATE_LIMITED,
                quota=Quota(
                    subject=f"rate_class:{rate_class}",
                    description=f"the rate limit of {rate_class} calls (the plan's, or the"
                    " key's own when it has one)",
                ),
                metadata={"rate_class": rate_class},
            )


def _tightest(decisions: list[Decision]) -> Decision:
    """The headers a caller should plan by: the bucket with the fewest tokens left."""
    return min(decisions, key=lambda d: (d.remaining, -d.reset_s))
