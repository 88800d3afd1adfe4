"""The rate limiter's Redis in memory: `ScriptHost` (storage/metering/rate_limiter.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from storage.metering.rate_limiter import LEASE_SCRIPT, LeaseScript

__all__ = ["FakeLeaseRedis"]

_WEEK_S = 604_800.0


class FakeLeaseRedis:
    """LEASE_SCRIPT's token buckets, on `clock` where Redis reads its TIME: the same grants,
    stocks, waits and expiry (tests/contracts/test_lease_script.py runs both). Any other
    script is refused. `down` makes every script fail as an unreachable Redis does."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # bucket -> (tokens, refilled at, expires at)
        self._buckets: dict[str, tuple[float, float, float]] = {}
        self.down = False

    def register_script(self, script: str) -> LeaseScript:
        if script != LEASE_SCRIPT:
            raise ValueError("the fake Redis runs the rate limiter's lease script only")
        return self._lease

    def tokens(self, bucket: str) -> float | None:
        """What the bucket holds now (None: absent, expired or never used)."""
        kept = self._buckets.get(bucket)
        return None if kept is None or kept[2] <= self._clock() else kept[0]

    async def _lease(self, keys: Sequence[str], args: Iterable[float]) -> list[Any]:
        if self.down:
            raise RedisConnectionError("the fake Redis is down")
        (bucket,) = keys
        rate, burst, want = (float(a) for a in args)
        now = self._clock()
        kept = self._buckets.get(bucket)
        tokens, ts = (burst, now) if kept is None or kept[2] <= now else kept[:2]
        if now > ts:
            tokens, ts = min(burst, tokens + (now - ts) * rate), now
        grant = max(0, min(int(want), math.floor(tokens)))
        tokens -= grant
        refill_s = burst / rate if rate else math.inf
        if math.isnan(refill_s) or refill_s > _WEEK_S:
            refill_s = _WEEK_S
        expires = now + math.floor(max(0.0, refill_s) * 1000) / 1000 + 1.0
        self._buckets[bucket] = (tokens, ts, expires)
        wait = 0.0
        if grant < want:
            wait = (min(want, burst) - tokens) / rate if rate else math.inf
            if math.isnan(wait) or wait > _WEEK_S:
                wait = _WEEK_S
        return [grant, repr(tokens), repr(wait)]
