"""Cache invalidation across replicas over Redis sharded pub/sub.

Revocations, rotations and namespace deletions are published on one channel;
every replica drops the matching cache entries when the message arrives
(well under a second on a healthy Redis). While this process is not
subscribed, it cannot hear invalidations, so it turns its caches off and
clears them again on reconnect: a missed message can never keep a revoked
key alive.

The channel is sharded (SPUBLISH/SSUBSCRIBE, Redis 7.0 and later) on a single
node and on Redis Cluster alike. On a cluster a sharded channel lives on the
shard that owns its slot, so a message travels from the publisher to that
shard and its subscribers, where a classic PUBLISH is broadcast over the
cluster bus to every node; and a subscriber that loses its shard (a failover)
sees its subscription end, re-reads the slot map and subscribes again on the
new primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisClusterException, RedisError

from storage.backends.redis_client import RedisClient, learn_topology, next_shard_message

__all__ = ["CHANNEL", "InvalidationBus"]

CHANNEL = "mg:invalidations"
_LOG = logging.getLogger("meshgate.invalidation")


class _SubscriptionEnded(Exception):
    """Redis ended the subscription (SUNSUBSCRIBE): the channel's slot moved elsewhere."""


class InvalidationBus:
    def __init__(
        self,
        *,
        redis: RedisClient,
        on_key: Callable[[str], None],
        on_namespace: Callable[[str], None],
        on_live: Callable[[bool], None],
    ) -> None:
        self._redis = redis
        self._on_key = on_key
        self._on_namespace = on_namespace
        self._on_live = on_live
        self._live = asyncio.Event()
        self.received = 0

    @property
    def live(self) -> bool:
        return self._live.is_set()

    async def wait_live(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._live.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def key_changed(self, key_id: str) -> None:
        self._on_key(key_id)
        await self._publish(f"key:{key_id}")

    async def namespace_deleted(self, namespace_id: str) -> None:
        self._on_namespace(namespace_id)
        await self._publish(f"ns:{namespace_id}")

    async def _publish(self, message: str) -> None:
        try:
            await self._redis.spublish(CHANNEL, message)
        except (RedisError, OSError) as exc:
            # The store already holds the change; other replicas see it when their
            # cache entries lapse (at most the key-cache TTL) or they reconnect.
            _LOG.error("could not publish invalidation %s: %s", message, type(exc).__name__)

    def _dispatch(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        kind, _, ident = text.partition(":")
        if kind == "key":
            self._on_key(ident)
        elif kind == "ns":
            self._on_namespace(ident)
        self.received += 1

    def _set_live(self, live: bool) -> None:
        if live == self._live.is_set():
            return
        if live:
            self._live.set()
        else:
            self._live.clear()
        self._on_live(live)

    async def run(self) -> None:
        """Subscribe forever, reconnecting with backoff; cancel to stop."""
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await learn_topology(self._redis)
                await pubsub.ssubscribe(CHANNEL)
                while True:
                    message = await next_shard_message(pubsub, timeout_s=1.0)
                    kind = message.get("type") if message is not None else None
                    if kind == "ssubscribe":
                        self._set_live(True)
                        backoff = 0.1
                    elif kind == "smessage" and message is not None:
                        self._dispatch(message["data"])
                    elif kind == "sunsubscribe":  # the shard moved (a failover, a resharding)
                        raise _SubscriptionEnded
            except asyncio.CancelledError:
                raise
            except (RedisError, RedisClusterException, OSError, _SubscriptionEnded) as exc:
                if self.live:
                    _LOG.warning("invalidation channel lost (%s); caches off", type(exc).__name__)
                self._set_live(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
