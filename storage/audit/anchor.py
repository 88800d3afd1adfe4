"""The audit chain's head, anchored outside MongoDB (in Redis).

A hash chain kept in one collection proves only that the collection is
consistent with itself: whoever can write `audit_blocks` can drop the newest
events, drop the whole chain, or rewrite events and recompute every hash after
them, and the chain still verifies. So after every append the writer also
records the head it reached (sequence and hash) in Redis, under
`mg:{org_…}:audit:head`, a store the audit collection's writer cannot change
through MongoDB. The anchor only moves forward (a script compares sequences),
so replicas that write out of order never move it back.

Verification reads the anchor first, then the chain: a chain that ends before
the anchored sequence was truncated, and one whose event at that sequence has
another hash was rewritten. The anchor trails the chain by at most the write
in flight, and by more while Redis is unreachable (it catches up with the next
write). A Redis that loses its data loses the anchor; the next write sets it
again from the chain as it then is. The key has no expiry, so only an eviction
policy that evicts keys without a TTL (`allkeys-*`) could drop it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from storage.backends.redis_client import RedisClient
from storage.backends.redis_keys import organization_key

__all__ = ["Anchor", "AuditAnchor"]

_LOG = logging.getLogger("meshgate.audit")

_ADVANCE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'sequence') or '0')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'sequence', ARGV[1], 'hash', ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Anchor:
    sequence: int
    hash: str


class AuditAnchor:
    def __init__(
        self,
        *,
        redis: RedisClient,
        timeout_s: float = 1.0,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._script = redis.register_script(_ADVANCE)
        self._failing = False
        self._skip_until = 0.0  # after a failure: the audit writer does not wait on Redis

    @staticmethod
    def key(organization_id: str) -> str:
        return organization_key(organization_id, "audit", "head")

    async def advance(self, organization_id: str, *, sequence: int, hash: str) -> None:
        """Best effort: a failure is logged (once until the next success), never raised;
        the next append moves the anchor past it. For `retry_after_s` after a failure
        the anchor is not tried at all, so a Redis outage does not slow the audit writer
        by a timeout per organization."""
        if self._clock() < self._skip_until:
            return
        try:
            await asyncio.wait_for(
                self._script(keys=[self.key(organization_id)], args=[sequence, hash]),
                self._timeout_s,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._failing:
                _LOG.warning(
                    "cannot anchor the audit chain's head in Redis (%s); it trails until"
                    " Redis answers",
                    type(exc).__name__,
                )
            self._failing = True
            self._skip_until = self._clock() + self._retry_after_s
            return
        if self._failing:
            _LOG.info("the audit chain's head is anchored in Redis again")
            self._failing = False

    async def read(self, organization_id: str) -> Anchor | None:
        """The anchored head, None when none is recorded; raises when Redis cannot answer
        (a verification without its anchor would claim more than it checked)."""
        raw = await asyncio.wait_for(
            self._redis.hmget(self.key(organization_id), ["sequence", "hash"]),
            self._timeout_s,
        )
        sequence, digest = raw
        if sequence is None or digest is None:
            return None
        return Anchor(
            int(sequence),
            digest.decode() if isinstance(digest, bytes) else str(digest),
        )
