"""One Redis client type for a single node and for Redis Cluster, and what differs between them.

Every Redis call of meshgate is a command or a Lua script on keys of one hash
tag (`mg:{org_…}:…`, `mg:{ns_…}:…`: one slot), or the invalidation channel.
So the same calls run on `redis.asyncio.Redis` and on
`redis.asyncio.cluster.RedisCluster`, which routes each by its key's slot.
What a cluster needs besides is here, in one place:

- the health probe reads `CLUSTER INFO`: a cluster whose `cluster_state` is
  not `ok` (a shard without a primary) refuses commands, so it counts as down;
- a key pattern of one hash tag is scanned on the node owning that slot only;
- sharded pub/sub messages come from `get_sharded_message`, and after a
  failover the subscriber must learn the new slot map before subscribing
  again (a broken subscription does not refresh it, unlike a failed command);
- the cluster client's own failures (no reachable node, a slot without a
  primary) are `RedisClusterException`s, outside `RedisError`: `ClusterClient`
  turns them, and CLUSTERDOWN answers, into `redis.ConnectionError`, so every
  caller's Redis-down path (fallback limiter, credits UNAVAILABLE) covers a
  cluster too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = [
    "ClusterClient",
    "RedisClient",
    "adopt_connections",
    "learn_topology",
    "next_shard_message",
    "ping",
    "scan_slot",
]

type RedisClient = Redis | RedisCluster


class ClusterClient(RedisCluster):
    """`RedisCluster` whose failures look like a single node's: `redis.ConnectionError`."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (RedisClusterException, ClusterDownError) as exc:
            # the type only: the message may name nodes (no secrets, but no need either)
            raise RedisConnectionError(f"Redis Cluster unavailable ({type(exc).__name__})") from exc


async def ping(redis: RedisClient) -> None:
    """The health probe: PING a single node; on a cluster, CLUSTER INFO must say ok."""
    if isinstance(redis, RedisCluster):
        info = await redis.cluster_info()
        state = info.get("cluster_state") if isinstance(info, dict) else None
        if state != "ok":
            raise ClusterDownError(f"cluster_state:{state}")
        return
    await redis.ping()


async def scan_slot(redis: RedisClient, *, match: str, count: int = 500) -> AsyncIterator[Any]:
    """The keys matching `match`, a pattern inside one hash tag (`mg:{ns_…}:*`): on a
    cluster only the node owning that slot holds such keys, so only it is scanned."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the slot map (once), to find the owner
        owner = redis.get_node_from_key(match)
        async for key in redis.scan_iter(match=match, count=count, target_nodes=owner):
            yield key
        return
    async for key in redis.scan_iter(match=match, count=count):
        yield key


async def learn_topology(redis: RedisClient) -> None:
    """Before subscribing: read the cluster's slot map now (a no-op on a single node).

    A command that fails on a node that is gone makes the client re-read the map
    by itself; a subscription does not, so after a failover it would keep
    dialling the dead primary of the channel's slot."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the first time: nodes, slots and the command table
        await redis.nodes_manager.initialize()  # every time: the slot map as it is now


async def next_shard_message(pubsub: PubSub, *, timeout_s: float) -> dict[str, Any] | None:
    """The next message of a sharded (SSUBSCRIBE) subscription, or None after `timeout_s`."""
    if isinstance(pubsub, ClusterPubSub):
        message = await pubsub.get_sharded_message(timeout=timeout_s)
    else:
        message = await pubsub.get_message(timeout=timeout_s)
    return dict(message) if message is not None else None


async def adopt_connections(client: Redis, fresh: Redis) -> ConnectionPool:
    """`client` takes `fresh`'s connections (new credentials, after a secret rotation) and
    returns its previous pool, for the caller to close after a grace period.

    Every store holds the same client object and every command asks it for its
    pool when it starts, so commands from now on run on the new connections;
    a command in flight releases its connection to the pool it came from, and a
    subscription keeps its connection until that pool is closed (then it
    subscribes again, on the new pool). `fresh` must answer a PING first:
    nothing changes when it cannot connect."""
    await fresh.ping()
    previous = client.connection_pool
    client.connection_pool = fresh.connection_pool
    return previous
