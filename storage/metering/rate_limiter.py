"""Rate limits: token buckets in Redis, leased to each replica in small batches.

The bucket lives in Redis (one hash per organization or key and route class,
`mg:{org_…}:rl:<class>`), refilled by one Lua script that grants up to `want`
tokens atomically. A replica takes a lease of tokens and spends them locally,
so the common call pays no Redis round trip; when a lease runs low it is
refilled in the background, once per bucket however many calls are waiting
(single flight).

Accuracy: every admitted call spends a token that Redis granted exactly once,
so N replicas together never admit more than one bucket would — over any
window of T seconds at most `burst + per_second * T`: the overshoot is zero.
The price is on the other side: tokens leased but not yet spent are invisible
to the other replicas (leases expire after `lease_ttl_s`; unspent tokens are
dropped, never returned), and a replica that found less than a lease in Redis
waits until a full lease has accrued before asking again. Admissions can
therefore fall short of the limit by at most `2 * replicas * lease` tokens.
The lease is ~50 ms of the bucket's rate, at most burst/8: a single token for
small limits (where a round trip per call costs little) and hundreds for high
ones, so at saturation Redis sees about one script call per lease, not per
call.

When Redis cannot be reached (connection error or timeout), the limiter switches
for `retry_after_s` to the configured fallback: a local per-replica bucket with
the same limit (default: N replicas may then admit up to N times the limit),
fail open or fail closed; it counts every fallback decision for alerting and
tries Redis again afterwards, so recovery needs no restart. It logs the outage
once when it starts and once when Redis answers again. When Redis answers but
the script fails for one bucket (an error reply), only that bucket uses the
fallback for `retry_after_s`; every other bucket, and every other tenant, keeps
its leases and its Redis.

Memory: the process keeps state for at most `max_buckets` buckets of each kind
(leases, local fallback buckets, failing buckets), the least recently used
forgotten first, whatever names the callers make up (the rate-limit service's
descriptors name buckets freely). Forgetting a lease drops its unspent tokens
(never returned, as when it expires: the bucket admits less, never more) and its
"Redis was empty" wait (the next call asks Redis again); forgetting a local bucket
while Redis is down starts it full again, which the local fallback already
allows per replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from redis.exceptions import RedisError, ResponseError

from storage.backends.deadlines import within
from storage.backends.tracing import client_span
from storage.core.errors import UnavailableError
from storage.core.plans import Limit

__all__ = [
    "LEASE_SCRIPT",
    "Decision",
    "FailureMode",
    "LeaseScript",
    "RateLimiter",
    "ScriptHost",
    "lease_size",
]

_LOG = logging.getLogger("meshgate.ratelimit")

LEASE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local grant = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - grant
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
-- the bucket may vanish once it would be full again; the time is clamped to a whole
-- number of milliseconds between 1 s and 7 days, whatever the arguments
local refill_ms = burst / rate * 1000
if refill_ms ~= refill_ms or refill_ms > 604800000 then
  refill_ms = 604800000
end
redis.call('PEXPIRE', KEYS[1], math.floor(math.max(0, refill_ms)) + 1000)
-- when short of a full lease: how long until `want` tokens (capped at burst) have accrued
local wait = 0
if grant < want then
  wait = (math.min(want, burst) - tokens) / rate
  if wait ~= wait or wait > 604800 then
    wait = 604800
  end
end
return {grant, tostring(tokens), tostring(wait)}
"""


class LeaseScript(Protocol):
    """LEASE_SCRIPT, registered: `[grant, tokens left, seconds to wait]` for one bucket."""

    def __call__(self, keys: Sequence[str], args: Iterable[float]) -> Awaitable[Any]: ...


class ScriptHost(Protocol):
    """The limiter's Redis: where LEASE_SCRIPT runs. A Redis client (single node or
    cluster), or an in-memory bucket store (tests/support/fakes, held to the same cases by
    tests/contracts/)."""

    def register_script(self, script: str) -> LeaseScript: ...


class FailureMode(StrEnum):
    LOCAL = "local"  # fall back to a per-replica bucket (fail open, bounded)
    OPEN = "open"  # admit everything
    CLOSED = "closed"  # refuse with UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0

    def headers(self) -> tuple[tuple[str, str], ...]:
        return (
            ("ratelimit-limit", str(self.limit)),
            ("ratelimit-remaining", str(self.remaining)),
            ("ratelimit-reset", str(math.ceil(self.reset_s))),
        )


def lease_size(limit: Limit, window_s: float = 0.05) -> int:
    return max(1, min(math.ceil(limit.per_second * window_s), limit.burst // 8))


@dataclass
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    stock: float = 0.0  # tokens left in Redis at the last grant (for the headers)
    # Redis had less than a full lease: don't ask again before a full lease has accrued
    empty_until: float = 0.0
    # refill when this few tokens are left (a quarter of a lease)
    low_water: int = 0
    refill: asyncio.Task[None] | None = None


@dataclass
class _LocalBucket:
    limit: Limit
    tokens: float
    ts: float

    def take(self, now: float) -> tuple[bool, float]:
        self.tokens = min(self.limit.burst, self.tokens + (now - self.ts) * self.limit.per_second)
        self.ts = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True, self.tokens
        return False, self.tokens


@dataclass
class RateLimiter:
    redis: ScriptHost
    failure_mode: FailureMode = FailureMode.LOCAL
    timeout_s: float = 0.2
    retry_after_s: float = 1.0
    lease_ttl_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    on_fallback: Callable[[str], None] = lambda bucket: None
    # buckets this process keeps state for, per kind; the least recently used beyond it go
    max_buckets: int = 10_000
    _leases: OrderedDict[str, _Lease] = field(default_factory=OrderedDict)
    _local: OrderedDict[str, _LocalBucket] = field(default_factory=OrderedDict)
    # refills in flight, also of leases forgotten meanwhile (`drain` waits for them all)
    _refilling: set[asyncio.Task[None]] = field(default_factory=set)
    _degraded_until: float = 0.0
    # when the current outage began (None: Redis answers), for one log line per outage
    _outage_since: float | None = None
    # buckets whose script failed -> until when they use the fallback; kept until a refill works
    _broken: dict[str, float] = field(default_factory=dict)
    fallbacks: int = 0
    redis_calls: int = 0

    def __post_init__(self) -> None:
        self._script = self.redis.register_script(LEASE_SCRIPT)

    def try_acquire(self, bucket: str, limit: Limit) -> Decision | None:
        """`acquire` without waiting: None when the lease is empty and a refill is on its way."""
        now = self.clock()
        if now < self._degraded_until or (self._broken and now < self._broken.get(bucket, 0.0)):
            return self._fallback(bucket, limit, now)
        leases = self._leases
        lease = leases.get(bucket)
        if lease is None:
            lease = leases[bucket] = _Lease()
            if len(leases) > self.max_buckets:
                leases.popitem(last=False)
        else:
            leases.move_to_end(bucket)
        if lease.tokens > 0 and now < lease.expires:
            lease.tokens -= 1
            if (
                lease.tokens <= lease.low_water
                and lease.refill is None
                and now >= lease.empty_until
            ):
                self._start_refill(bucket, limit, lease)
            return self._decision(True, lease, limit)
        if now < lease.empty_until:
            return self._decision(False, lease, limit, retry_after_s=lease.empty_until - now)
        if lease.refill is None:
            self._start_refill(bucket, limit, lease)
        return None

    async def acquire(self, bucket: str, limit: Limit) -> Decision:
        """One token from `bucket`, or a refusal saying when to retry."""
        for _ in range(3):
            decision = self.try_acquire(bucket, limit)
            if decision is not None:
                return decision
            lease = self._leases.get(bucket)
            refill = lease.refill if lease is not None else None
            if refill is not None:
                await asyncio.shield(refill)
        return self._decision(
            False, self._leases.get(bucket) or _Lease(), limit, retry_after_s=1 / limit.per_second
        )

    async def drain(self) -> None:
        """Wait for the lease refills in flight (before the Redis client is closed)."""
        await asyncio.gather(*self._refilling, return_exceptions=True)

    @property
    def lease_count(self) -> int:
        """Buckets with a lease here (at most `max_buckets`)."""
        return len(self._leases)

    @property
    def local_bucket_count(self) -> int:
        """Local fallback buckets kept (at most `max_buckets`)."""
        return len(self._local)

    def _start_refill(self, bucket: str, limit: Limit, lease: _Lease) -> None:
        task = lease.refill = asyncio.create_task(self._refill(bucket, limit, lease))
        self._refilling.add(task)
        task.add_done_callback(self._refilling.discard)

    async def _refill(self, bucket: str, limit: Limit, lease: _Lease) -> None:
        """Never raises: a failure degrades the limiter (the callers then use the fallback)."""
        try:
            want = lease_size(limit)
            lease.low_water = want // 4
            self.redis_calls += 1
            with client_span("redis", "EVALSHA", **{"meshgate.script": "rate_lease"}):
                grant, stock, wait = await within(
                    self._script(keys=[bucket], args=[limit.per_second, limit.burst, want]),
                    self.timeout_s,
                )
            now = self.clock()
            grant, stock_f, wait_f = int(grant), float(stock), float(wait)
            if now >= lease.expires:
                lease.tokens = 0
            lease.tokens += grant
            lease.stock = stock_f
            lease.expires = now + self.lease_ttl_s
            lease.empty_until = now + min(max(wait_f, 0.0), self.lease_ttl_s * 60)
            self._answered(bucket, now)
        except (ResponseError, ValueError) as exc:  # Redis answered: this bucket's trouble
            self._break(bucket, exc)
        except (RedisError, OSError, TimeoutError) as exc:
            self._degrade(exc)
        finally:
            lease.refill = None

    def _answered(self, bucket: str, now: float) -> None:
        if self._outage_since is not None:
            _LOG.info("rate limiter reaches Redis again after %.1fs", now - self._outage_since)
            self._outage_since = None
        if self._broken.pop(bucket, None) is not None:
            _LOG.info("rate limit script works again for bucket %s", bucket)

    def _break(self, bucket: str, exc: BaseException) -> None:
        """The script failed for one bucket: that bucket alone uses the fallback for a while."""
        if bucket not in self._broken:
            _LOG.error(
                "rate limit script failed for bucket %s (%s); %s for that bucket",
                bucket,
                type(exc).__name__,
                f"fallback {self.failure_mode.value}",
            )
        now = self.clock()
        broken = self._broken
        broken[bucket] = now + self.retry_after_s
        if len(broken) > self.max_buckets:
            # those whose wait is over first, then the oldest
            self._broken = broken = {k: until for k, until in broken.items() if until > now}
            while len(broken) > self.max_buckets:
                del broken[next(iter(broken))]
        self._leases.pop(bucket, None)

    def _degrade(self, exc: BaseException) -> None:
        """Redis cannot be reached: every bucket uses the fallback, retried every
        `retry_after_s`; logged once per outage (and once when it ends)."""
        now = self.clock()
        if self._outage_since is None:
            self._outage_since = now
            _LOG.warning(
                "rate limiter cannot reach Redis (%s); fallback %s until it answers again",
                type(exc).__name__,
                self.failure_mode.value,
            )
        self._degraded_until = now + self.retry_after_s
        self._leases.clear()

    def _fallback(self, bucket: str, limit: Limit, now: float) -> Decision:
        self.fallbacks += 1
        self.on_fallback(bucket)
        if self.failure_mode is FailureMode.CLOSED:
            raise UnavailableError("rate limiting is unavailable; retry later")
        if self.failure_mode is FailureMode.OPEN:
            return Decision(True, limit.burst, limit.burst, 0.0)
        local = self._local.get(bucket)
        if local is None or local.limit != limit:
            local = self._local[bucket] = _LocalBucket(limit, float(limit.burst), now)
            if len(self._local) > self.max_buckets:
                self._local.popitem(last=False)
        self._local.move_to_end(bucket)
        allowed, tokens = local.take(now)
        reset = (limit.burst - tokens) / limit.per_second
        retry = 0.0 if allowed else (1 - tokens) / limit.per_second
        return Decision(allowed, limit.burst, int(tokens), reset, retry)

    @staticmethod
    def _decision(
        allowed: bool, lease: _Lease, limit: Limit, *, retry_after_s: float = 0.0
    ) -> Decision:
        remaining = max(0, min(limit.burst, lease.tokens + math.floor(lease.stock)))
        reset = (limit.burst - remaining) / limit.per_second
        return Decision(allowed, limit.burst, remaining, reset, retry_after_s)
