"""Envoy rate-limit service v3 `ShouldRateLimit`: descriptors drawn from meshgate's own buckets.

A descriptor is a list of entries; meshgate reads these keys (any other key is a
configuration error, INVALID_ARGUMENT, so a typo never silently turns a limit off):

- `organization_id` (required): the organization's bucket of the route class, the one
  its direct calls draw from, with its plan's limit;
- `rate_class` (default `metadata`): metadata, data, search or admin;
- `namespace_id`: a bucket of that namespace inside the organization (the plan's limit);
- `key_id`: the key's own bucket, its own limit narrowed by the plan's (as on direct calls).

`namespace_id` and `key_id` exclude each other. Every descriptor draws `hits_addend`
tokens (the descriptor's own, else the request's, 0 meaning 1, at most MAX_HITS) from
the same leased Redis buckets (storage/metering/rate_limiter.py) and the same plan
table as meshgate's rate-limit step. A descriptor naming an unknown organization, or a
key that is unknown, revoked or expired, is OVER_LIMIT (fail closed).

Dry run, like envoyproxy/ratelimit's shadow mode: a plan's `dry_run` limit of the class
(for the organization's and a namespace's buckets) and a key's own limit marked `dry_run`
(for a key's bucket, then held to the plan's limit) are drawn, with the descriptor's hits,
from dry-run buckets of their own (the very ones direct calls and `Check` draw in dry run)
once the limit in force said OK. A would-be OVER_LIMIT there leaves the answer OK and is
recorded on the call (`meshgate_dry_run_denials_total`, the access line's `dry_run`).

A sidecar speaks only for the organizations of its binding (bindings.py): a request with
any descriptor naming another is PERMISSION_DENIED as a whole, before any descriptor
draws a token. A refusal, not OVER_LIMIT: the descriptor is no client's over-use but a
sidecar asking about an organization it does not serve (a misconfiguration or a stolen
credential), and Envoy's failure_mode_deny refuses the call either way while the error
shows in meshgate's metrics and access line. At most MAX_DESCRIPTORS descriptors per
request and MAX_HITS hits per descriptor: one request draws at most 1,600 tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import duration_pb2

from calls.state import current_call
from interceptors.rate_limit import RateLimit, Shadow
from interceptors.sidecar.bindings import SidecarBinding
from storage.core.cache import TTLCache
from storage.core.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Reason,
    UnauthenticatedError,
)
from storage.core.ids import KEY_ID_RE, NAMESPACE_ID_RE, ORGANIZATION_ID_RE
from storage.core.plans import RATE_CLASSES, Limit, Plan
from storage.metering.rate_limiter import Decision
from storage.tenancy.keys import KeyStore
from storage.tenancy.organizations import Organization, OrganizationStore

__all__ = ["DESCRIPTOR_KEYS", "MAX_DESCRIPTORS", "MAX_HITS", "RateLimitDecider"]

DESCRIPTOR_KEYS = ("organization_id", "rate_class", "namespace_id", "key_id")
MAX_HITS = 100
MAX_DESCRIPTORS = 16
_OK = rls_pb2.RateLimitResponse.OK
_OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
_UNITS = (
    (rls_pb2.RateLimitResponse.RateLimit.SECOND, 1),
    (rls_pb2.RateLimitResponse.RateLimit.MINUTE, 60),
    (rls_pb2.RateLimitResponse.RateLimit.HOUR, 3600),
    (rls_pb2.RateLimitResponse.RateLimit.DAY, 86400),
)


@dataclass(frozen=True, slots=True)
class _Descriptor:
    organization_id: str
    rate_class: str
    owner: str  # "" (the organization), a namespace_id or a key_id
    hits: int


class RateLimitDecider:
    """Answers RateLimitRequests from the rate-limit step's buckets and limits."""

    def __init__(
        self,
        *,
        rate_limit: RateLimit,
        plan_of: Callable[[str], Plan],
        organizations: OrganizationStore,
        keys: KeyStore,
        key_cache_ttl_s: float = 10.0,
        max_key_limits: int = 10_000,
    ) -> None:
        self._rate_limit = rate_limit
        self._plan_of = plan_of
        self._organizations = organizations
        self._keys = keys
        # key_id -> its own limit (None: the plan's) and whether it is in dry run; revocations
        # reach it within the TTL; only keys that exist are kept, the least recently cached
        # beyond the cap dropped
        self._key_limits: TTLCache[tuple[str, str], tuple[Limit | None, bool]] = TTLCache(
            ttl_s=min(key_cache_ttl_s, 10.0), max_entries=max_key_limits
        )

    @property
    def rate_limit(self) -> RateLimit:
        """The request path's rate-limit step, whose buckets and names the descriptors use."""
        return self._rate_limit

    @property
    def cached_key_limits(self) -> int:
        """Keys whose own limit is cached (at most `max_key_limits`)."""
        return len(self._key_limits)

    async def should_rate_limit(
        self, request: rls_pb2.RateLimitRequest, *, sidecar: SidecarBinding
    ) -> rls_pb2.RateLimitResponse:
        """The answer to one request of the sidecar bound by `sidecar`: every descriptor is
        checked (its form, its organization against the binding) before any draws."""
        if not request.descriptors:
            raise InvalidArgumentError("a rate limit request needs at least one descriptor")
        if len(request.descriptors) > MAX_DESCRIPTORS:
            raise InvalidArgumentError(f"at most {MAX_DESCRIPTORS} descriptors per request")
        parsed = [
            _parse(d, default_hits=request.hits_addend, where=f"descriptors[{i}]")
            for i, d in enumerate(request.descriptors)
        ]
        for index, descriptor in enumerate(parsed):
            if not sidecar.speaks_for_organization(descriptor.organization_id):
                raise PermissionDeniedError(
                    f"descriptors[{index}]: this sidecar may not speak for organization"
                    f" {descriptor.organization_id}",
                    reason=Reason.PEER_NOT_ALLOWED,
                )
        statuses: list[Any] = []
        decisions: list[Decision] = []
        for descriptor in parsed:
            decision, limit = await self._decide(descriptor)
            decisions.append(decision)
            statuses.append(_status(decision, limit))
        over = any(not d.allowed for d in decisions)
        tightest = min(decisions, key=lambda d: (d.allowed, d.remaining, -d.reset_s))
        headers = list(tightest.headers())
        if over:
            retry = max(d.retry_after_s for d in decisions if not d.allowed)
            headers.append(("retry-after", str(max(1, math.ceil(retry)))))
        return rls_pb2.RateLimitResponse(
            overall_code=_OVER if over else _OK,
            statuses=statuses,
            response_headers_to_add=[base_pb2.HeaderValue(key=k, value=v) for k, v in headers],
        )

    async def _decide(self, descriptor: _Descriptor) -> tuple[Decision, Limit | None]:
        shadows: list[Shadow] = []
        try:
            organization = await self._organization(descriptor.organization_id)
            plan = self._plan_of(organization.plan)
            limit = plan.limits[descriptor.rate_class]
            if descriptor.owner.startswith("key_"):
                limit, shadows = await self._key_limit(descriptor, limit)
            else:
                shadows = self._rate_limit.shadows(
                    plan=plan,
                    organization_id=descriptor.organization_id,
                    rate_class=descriptor.rate_class,
                    owner=descriptor.owner,
                )
        except (NotFoundError, UnauthenticatedError):
            return Decision(False, 0, 0, 0.0, retry_after_s=60.0), None
        bucket = self._rate_limit.bucket_name(
            descriptor.organization_id, descriptor.owner, descriptor.rate_class
        )
        limiter = self._rate_limit.limiter
        decision = await limiter.acquire(bucket, limit)
        for _ in range(descriptor.hits - 1):
            if not decision.allowed:
                break
            decision = await limiter.acquire(bucket, limit)
        if decision.allowed and shadows:
            pending = self._rate_limit.draw_shadows(
                current_call.get(), shadows, hits=descriptor.hits
            )
            if pending is not None:
                await pending
        return decision, limit

    async def _organization(self, organization_id: str) -> Organization:
        return self._organizations.cached(organization_id) or await self._organizations.get(
            organization_id
        )

    async def _key_limit(self, descriptor: _Descriptor, plan: Limit) -> tuple[Limit, list[Shadow]]:
        """The limit of a key's bucket, and its dry run: an own limit in dry run leaves the
        bucket at the plan's and is drawn from the key's dry-run bucket."""
        cache_key = (descriptor.organization_id, descriptor.owner)
        cached = self._key_limits.get(cache_key)
        if cached is None:
            record = await self._keys.active_in(
                organization_id=descriptor.organization_id, key_id=descriptor.owner
            )
            cached = (record.rate_limit, record.rate_limit_dry_run)
            self._key_limits.put(cache_key, cached)
        own, dry_run = cached
        if own is None:
            return plan, []
        if not dry_run:
            return own.narrowed(plan), []
        shadow = self._rate_limit.key_shadow(
            organization_id=descriptor.organization_id,
            key_id=descriptor.owner,
            rate_class=descriptor.rate_class,
            limit=own.narrowed(plan),
        )
        return plan, [shadow]


def _parse(descriptor: Any, *, default_hits: int, where: str) -> _Descriptor:
    entries: dict[str, str] = {}
    for entry in descriptor.entries:
        if entry.key not in DESCRIPTOR_KEYS:
            raise InvalidArgumentError(
                f"{where}: unknown descriptor key {entry.key[:64]!r}"
                f" (meshgate reads {', '.join(DESCRIPTOR_KEYS)})"
            )
        if entry.key in entries:
            raise InvalidArgumentError(f"{where}: the {entry.key} entry may appear only once")
        entries[entry.key] = entry.value
    organization_id = entries.get("organization_id", "")
    if not ORGANIZATION_ID_RE.match(organization_id):
        raise InvalidArgumentError(f"{where}: an organization_id entry (org_...) is required")
    rate_class = entries.get("rate_class", "metadata")
    if rate_class not in RATE_CLASSES:
        raise InvalidArgumentError(f"{where}: rate_class must be one of {', '.join(RATE_CLASSES)}")
    namespace_id, key_id = entries.get("namespace_id", ""), entries.get("key_id", "")
    if namespace_id and key_id:
        raise InvalidArgumentError(f"{where}: give namespace_id or key_id, not both")
    if namespace_id and not NAMESPACE_ID_RE.match(namespace_id):
        raise InvalidArgumentError(f"{where}: namespace_id is malformed (expected ns_...)")
    if key_id and not KEY_ID_RE.match(key_id):
        raise InvalidArgumentError(f"{where}: key_id is malformed (expected key_...)")
    hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_hits
    hits = hits or 1
    if hits > MAX_HITS:
        raise InvalidArgumentError(f"{where}: hits_addend may be at most {MAX_HITS}")
    return _Descriptor(organization_id, rate_class, namespace_id or key_id, hits)


def _status(decision: Decision, limit: Limit | None) -> Any:
    status = rls_pb2.RateLimitResponse.DescriptorStatus(
        code=_OK if decision.allowed else _OVER,
        limit_remaining=max(0, decision.remaining),
        duration_until_reset=_duration(
            decision.reset_s if decision.allowed else decision.retry_after_s
        ),
    )
    if limit is not None:
        status.current_limit.CopyFrom(_as_unit(limit))
    return status


def _as_unit(limit: Limit) -> Any:
    """The limit's sustained rate in the smallest unit where it is a whole number (Envoy's
    RateLimit has no fractions): 0.5/s is 30 per MINUTE."""
    for unit, seconds in _UNITS:
        per_unit = limit.per_second * seconds
        if per_unit >= 1 and abs(per_unit - round(per_unit)) < 1e-9:
            return rls_pb2.RateLimitResponse.RateLimit(requests_per_unit=round(per_unit), unit=unit)
    return rls_pb2.RateLimitResponse.RateLimit(
        requests_per_unit=max(1, round(limit.per_second * 86400)),
        unit=rls_pb2.RateLimitResponse.RateLimit.DAY,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return duration
