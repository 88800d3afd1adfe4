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

Dry run (calls/dry_run.py): a plan's `dry_run` limit of the class, and a key's own
limit marked `dry_run`, are drawn from buckets of their own (`mg:{org_…}:rl:dry:<class>`,
`mg:{org_…}:rl:dry:key_…:<class>`) by the calls the limits in force admitted; a refusal
there is recorded on the call (RATE_LIMITED) and refuses nothing. A key whose own limit is
in dry run is held to the plan's alone. Nothing about dry runs touches the common call: a
plan without dry-run limits and a key without a limit of its own take one bucket, as before.

Bucket names are kept for the `max_buckets` most recently made (the rate-limit
service names buckets from its callers' descriptors; beyond the cap the oldest
names are made again when next needed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from calls.dry_run import DryRunDenial, DryRunReason, DryRunRule
from calls.policy import Access, Policy
from calls.state import CallState, PeerContext
from interceptors.metrics import Metrics
from storage.backends.redis_keys import organization_key
from storage.core.errors import MeshgateError, Quota, Reason, ResourceExhaustedError
from storage.core.plans import Limit, Plan
from storage.metering.rate_limiter import Decision, RateLimiter

__all__ = ["RateLimit", "Shadow"]

# a bucket drawn in dry run: its name, its limit, and what a refusal there records
Shadow = tuple[str, Limit, DryRunDenial]


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
        plan = self._plan_of(principal.organization.plan)
        plan_limit = plan.limits[rate_class]
        organization_bucket = self._bucket(organization_id, "", rate_class)
        key = principal.key
        if key.rate_limit is None and not plan.dry_run_limits:  # the common call: one bucket
            decision = self._limiter.try_acquire(organization_bucket, plan_limit)
            if decision is None:
                return self._wait(call, [(organization_bucket, plan_limit)], [])
            self._apply(call, decision)
            return None
        buckets = [(organization_bucket, plan_limit)]
        if key.rate_limit is not None and not key.rate_limit_dry_run:
            # the key's own bucket first: it is the narrower one
            own = self._bucket(organization_id, key.key_id, rate_class)
            buckets.insert(0, (own, key.rate_limit.narrowed(plan_limit)))
        shadows = self.shadows(plan=plan, organization_id=organization_id, rate_class=rate_class)
        if key.rate_limit is not None and key.rate_limit_dry_run:
            shadows.append(
                self.key_shadow(
                    organization_id=organization_id,
                    key_id=key.key_id,
                    rate_class=rate_class,
                    limit=key.rate_limit.narrowed(plan_limit),
                )
            )
        pending = self._draw(call, buckets)
        if not shadows:
            return pending
        if pending is None:
            return self.draw_shadows(call, shadows)
        return self._then_shadows(pending, call=call, shadows=shadows)

    def shadows(
        self, *, plan: Plan, organization_id: str, rate_class: str, owner: str = ""
    ) -> list[Shadow]:
        """The plan's dry-run limit of the class, on the dry-run bucket of the organization
        (owner "") or of one owner inside it (a namespace: the rate-limit service)."""
        limit = plan.dry_run_limits.get(rate_class)
        if limit is None:
            return []
        name = self._bucket(organization_id, f"dry:{owner}" if owner else "dry", rate_class)
        return [(name, limit, DryRunDenial(DryRunRule.PLAN, DryRunReason.RATE_LIMITED, plan.name))]

    def key_shadow(
        self, *, organization_id: str, key_id: str, rate_class: str, limit: Limit
    ) -> Shadow:
        """A key's own limit in dry run (narrowed by the plan's, as when enforced)."""
        name = self._bucket(organization_id, f"dry:{key_id}", rate_class)
        return name, limit, DryRunDenial(DryRunRule.KEY, DryRunReason.RATE_LIMITED)

    def draw_shadows(
        self, call: CallState, shadows: list[Shadow], *, hits: int = 1
    ) -> Awaitable[None] | None:
        """Draw `hits` tokens from each dry-run bucket; a refusal is recorded on the call,
        never raised, and a limiter failure only leaves the dry run undecided."""
        for index, (name, limit, denial) in enumerate(shadows):
            for hit in range(hits):
                try:
                    decision = self._limiter.try_acquire(name, limit)
                except MeshgateError:  # the limiter's `closed` mode while Redis is down
                    break
                if decision is None:
                    return self._wait_shadows(
                        call, shadows[index:], first_hits=hits - hit, hits=hits
                    )
                if not decision.allowed:
                    call.dry_run += (denial,)
                    break
        return None

    async def _wait_shadows(
        self, call: CallState, shadows: list[Shadow], *, first_hits: int, hits: int
    ) -> None:
        for index, (name, limit, denial) in enumerate(shadows):
            for _ in range(first_hits if index == 0 else hits):
                try:
                    decision = await self._limiter.acquire(name, limit)
                except MeshgateError:
                    break
                if not decision.allowed:
                    call.dry_run += (denial,)
                    break

    async def _then_shadows(
        self, pending: Awaitable[None], *, call: CallState, shadows: list[Shadow]
    ) -> None:
        await pending
        waiting = self.draw_shadows(call, shadows)
        if waiting is not None:
            await waiting

    def _draw(self, call: CallState, buckets: list[tuple[str, Limit]]) -> Awaitable[None] | None:
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
