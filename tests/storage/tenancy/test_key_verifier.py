"""KeyVerifier's cache against revocations that race a key read (controlled interleavings)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from storage.backends.mongo import MongoStore
from storage.core.errors import UnauthenticatedError
from storage.core.ids import new_organization_id
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.key_verifier import KeyVerifier
from storage.tenancy.keys import PERMISSIONS, KeyReach, KeyRecord, KeyStore
from tests.support.held import HeldCollection, held_mongo
from tests.support.log_guard import NEVER_LOGGED
from tests.support.processes import RedisServer
from tests.support.waiting import eventually

DEVELOPMENT = frozenset({"development"})
EVERYWHERE = KeyReach(permissions=frozenset(PERMISSIONS), namespace_ids=frozenset())


async def new_key(store: KeyStore) -> tuple[KeyRecord, str]:
    record, secret = await store.create(
        organization_id=new_organization_id(),
        name="racing",
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=None,
    )
    NEVER_LOGGED.add(secret)
    return record, secret


async def revoke(store: KeyStore, record: KeyRecord) -> None:
    await store.revoke(
        organization_id=record.organization_id,
        environment="development",
        key_id=record.key_id,
        reach=EVERYWHERE,
    )


@pytest.fixture
async def slow_keys(
    quiet_mongo: MongoStore, mongo_uri: str
) -> AsyncIterator[tuple[KeyStore, HeldCollection]]:
    """A KeyStore with its own client, whose `keys` reads can be held."""
    store, held = held_mongo(mongo_uri, quiet_mongo.database.name, "keys")
    yield KeyStore(mongo=store), held["keys"]
    await store.close()


async def run_bus(
    redis: Redis, verifier: KeyVerifier
) -> tuple[InvalidationBus, asyncio.Task[None]]:
    """The bus wired to the verifier as the server wires it."""
    bus = InvalidationBus(
        redis=redis,
        on_key=verifier.forget_key,
        on_namespace=lambda _namespace_id: None,
        on_live=verifier.set_live,
    )
    runner = asyncio.create_task(bus.run())
    assert await bus.wait_live(5)
    return bus, runner


async def test_a_read_under_way_during_a_revocation_does_not_cache_the_key(
    quiet_mongo: MongoStore,
    slow_keys: tuple[KeyStore, HeldCollection],
    redis_server: RedisServer,
) -> None:
    """The read starts before RevokeKey and ends after the revocation was processed (in this
    very process). The call it serves began before the revocation and may pass; the next
    one must not, and nothing may be cached."""
    keys, held = slow_keys
    store = KeyStore(mongo=quiet_mongo)
    record, secret = await new_key(store)
    verifier = KeyVerifier(keys=keys, accepted_environments=DEVELOPMENT, ttl_s=10)
    redis = Redis.from_url(redis_server.url)
    bus, runner = await run_bus(redis, verifier)
    try:
        read = held.hold("find_one")
        verifying = asyncio.create_task(verifier.verify(secret))
        await read.arrived()  # the key, as it was before the revocation, is in hand
        await revoke(store, record)  # RevokeKey: the store first,
        await bus.key_changed(record.key_id)  # then the invalidation
        read.release()
        assert (await verifying).key_id == record.key_id
        assert verifier.cached(secret) is None
        with pytest.raises(UnauthenticatedError):
            await verifier.verify(secret)
    finally:
        runner.cancel()
        await redis.aclose()


async def test_a_read_under_way_across_a_bus_reconnect_does_not_cache_the_key(
    quiet_mongo: MongoStore,
    slow_keys: tuple[KeyStore, HeldCollection],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The revocation happens while the invalidation channel is down (its message is lost);
    the channel comes back before the read ends. The cache is on again by then, but what
    the read found predates the reconnect and must not be cached."""
    keys, held = slow_keys
    store = KeyStore(mongo=quiet_mongo)
    record, secret = await new_key(store)
    verifier = KeyVerifier(keys=keys, accepted_environments=DEVELOPMENT, ttl_s=10)
    server = RedisServer.on_free_port(tmp_path_factory.mktemp("bus"))
    server.start()
    redis = Redis.from_url(server.url, socket_connect_timeout=0.2)
    bus, runner = await run_bus(redis, verifier)
    try:
        read = held.hold("find_one")
        verifying = asyncio.create_task(verifier.verify(secret))
        await read.arrived()
        server.stop()

        async def down() -> bool:
            return not bus.live

        await eventually(down, timeout_s=10)
        await revoke(store, record)  # on another replica: its message never arrives here
        server.start()

        async def up() -> bool:
            return bus.live

        await eventually(up, timeout_s=10)
        assert verifier.cache_enabled
        read.release()
        await verifying
        assert verifier.cached(secret) is None
        with pytest.raises(UnauthenticatedError):
            await verifier.verify(secret)
    finally:
        runner.cancel()
        await redis.aclose()
        server.stop()
