"""The invalidation channel on a single redis-server and on a Redis Cluster, through a failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from storage.backends.redis_client import RedisClient
from storage.tenancy.invalidation import CHANNEL, InvalidationBus
from tests.support.redis_cluster import LocalRedisCluster, RedisEndpoint
from tests.support.waiting import eventually


@dataclass
class Replica:
    """One process's bus and what it heard."""

    redis: RedisClient
    keys: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    live_changes: list[bool] = field(default_factory=list)
    bus: InvalidationBus = field(init=False)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.bus = InvalidationBus(
            redis=self.redis,
            on_key=self.keys.append,
            on_namespace=self.namespaces.append,
            on_live=self.live_changes.append,
        )

    async def start(self) -> None:
        self.task = asyncio.create_task(self.bus.run())
        assert await self.bus.wait_live(10.0)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.redis.aclose()


async def started(count: int, endpoint: RedisEndpoint) -> list[Replica]:
    replicas = [Replica(redis=await endpoint.connect()) for _ in range(count)]
    for replica in replicas:
        await replica.start()
    return replicas


@pytest.fixture
async def three(redis_endpoint: RedisEndpoint) -> AsyncIterator[list[Replica]]:
    replicas = await started(3, redis_endpoint)
    yield replicas
    for replica in replicas:
        await replica.stop()


async def test_revocations_and_deletions_reach_every_replica(three: list[Replica]) -> None:
    publisher, *others = three
    await publisher.bus.key_changed("key_revoked")
    await publisher.bus.namespace_deleted("ns_deleted")
    assert publisher.keys[0] == "key_revoked"  # dropped locally before it is published

    async def heard() -> bool:
        return all(r.keys == ["key_revoked"] and r.namespaces == ["ns_deleted"] for r in others)

    await eventually(heard, timeout_s=2.0)
    assert all(r.bus.received == 2 for r in others)


async def test_a_lost_shard_turns_caches_off_until_the_channel_is_back(
    redis_cluster: LocalRedisCluster,
) -> None:
    """The primary serving the channel's slot is killed: every subscriber turns its caches
    off at once, and on again once a replica has taken over; then it hears again."""
    replicas = await started(2, redis_cluster.endpoint)
    listener, publisher = replicas
    try:
        primary = redis_cluster.primary_of(CHANNEL)
        killed = time.monotonic()
        redis_cluster.kill(primary)

        async def off() -> bool:
            return not listener.bus.live

        async def on() -> bool:
            return listener.bus.live

        off_after = await eventually(off, timeout_s=5.0)
        back_after = await eventually(on, timeout_s=20.0) + off_after
        assert redis_cluster.primary_of(CHANNEL) != primary  # a replica took the slot over
        print(
            f"\nchannel primary killed: caches off after {off_after * 1000:.0f} ms,"
            f" subscribed again after {back_after:.2f} s"
            f" ({time.monotonic() - killed:.2f} s since the kill)"
        )
        assert listener.live_changes == [True, False, True]

        async def delivered() -> bool:
            await publisher.bus.key_changed("key_after_failover")
            await asyncio.sleep(0.05)
            return "key_after_failover" in listener.keys

        await eventually(delivered, timeout_s=10.0, interval_s=0.1)
    finally:
        for replica in replicas:
            await replica.stop()
        await asyncio.to_thread(redis_cluster.restore)
