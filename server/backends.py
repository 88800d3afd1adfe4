"""Connecting the stores: the servers the settings name, or the embedded engines when
`--dev` chose them for a store without a URL; never an engine by default."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from server.embedded import EmbeddedMongo, embedded_redis
from server.env_values import SettingsError
from server.settings import Settings
from server.stores import (
    StoreCheck,
    mongodb_location,
    qdrant_location,
    redis_location,
    require_store_urls,
    wait_for_stores,
)
from storage.backends.mongo import MongoStore
from storage.backends.redis_client import ClusterClient, RedisClient
from storage.backends.redis_client import ping as ping_redis

__all__ = ["Backends", "mongo_only", "open_backends", "open_redis"]

_LOG = logging.getLogger("meshgate.backends")


@dataclass
class Backends:
    mongo: MongoStore
    redis: RedisClient
    qdrant: Any
    qdrant_remote: bool = False
    # each store's engine and where it is, for the start-up log (no credentials)
    engines: list[str] = field(default_factory=list)
    # the checks `open_backends` waited for: what the start-up wait and its log name
    checks: list[StoreCheck] = field(default_factory=list)
    _embedded_mongo: EmbeddedMongo | None = None

    async def close(self) -> None:
        await self.mongo.close()
        await self.redis.aclose()
        if self.qdrant is not None:
            await self.qdrant.close()
        if self._embedded_mongo is not None:
            await asyncio.to_thread(self._embedded_mongo.close)


def open_redis(url: str, *, cluster: bool, timeout_s: float) -> RedisClient:
    """A client for one Redis node, or for a Redis Cluster found from the node in `url`
    (the client discovers the others and follows the slot map through failovers)."""
    if cluster:
        return ClusterClient.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
    # After Redis restarts, every pooled connection is dead; without a retry each one would
    # surface as an outage (a second of fallback limits) the first time it is used. One
    # retry on a new connection, for connection errors only: a timeout is not retried (no
    # call waits twice), and a dead Redis refuses the second connect at once.
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=5,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


def _redis_store(settings: Settings) -> tuple[RedisClient, str, StoreCheck]:
    """The Redis client, its start-up log line and its check."""
    redis: RedisClient
    if settings.redis_url is not None:
        url = settings.redis_url.reveal()
        redis = open_redis(
            url, cluster=settings.redis_cluster, timeout_s=settings.backend_timeout_s
        )
        where = redis_location(url, cluster=settings.redis_cluster)
        line = f"Redis at {where}"
    else:
        redis = embedded_redis()
        where = "this process"
        line = "Redis: in-process fakeredis (--dev; this process only)"
    tried = "CLUSTER INFO" if settings.redis_cluster else "PING"
    return redis, line, StoreCheck("Redis", where, tried, lambda: ping_redis(redis))


async def _mongo_uri(settings: Settings) -> tuple[str, str, EmbeddedMongo | None]:
    """MongoDB's URI and start-up log line; the embedded engine, started, if it serves."""
    if settings.mongodb_uri is not None:
        uri = settings.mongodb_uri.reveal()
        return (
            uri,
            f"MongoDB at {mongodb_location(uri)}, database {settings.mongodb_database}",
            None,
        )
    path = settings.data_dir / "mongo"
    engine = EmbeddedMongo(data_dir=path)
    uri = await asyncio.to_thread(engine.start)
    line = (
        f"MongoDB: the embedded SecantusDB engine (--dev), process {engine.pid}"
        f" at {mongodb_location(uri)}, data in {path}"
    )
    return uri, line, engine


async def open_backends(
    settings: Settings, *, with_qdrant: bool = True, dev: bool = False
) -> Backends:
    """Clients of the stores, once each answers (server/stores.py waits, with a bound), and
    MongoDB's indexes made. Without `dev` every store needs its URL (SettingsError names
    the missing ones); with it, a store without one is served by its embedded engine."""
    if not dev:
        require_store_urls(settings, with_qdrant=with_qdrant)
    # Redis first: a missing embedded engine is refused before MongoDB's is started
    redis, redis_line, redis_check = _redis_store(settings)
    try:
        mongo_uri, mongo_line, embedded_mongo = await _mongo_uri(settings)
    except BaseException:
        await redis.aclose()
        raise
    mongo = MongoStore(
        uri=mongo_uri,
        database=settings.mongodb_database,
        timeout_ms=int(settings.backend_timeout_s * 1000),
    )
    engines = [redis_line, mongo_line]
    checks = [
        redis_check,
        StoreCheck("MongoDB", mongodb_location(mongo_uri), "ping", mongo.ping),
    ]
    qdrant: Any = None
    if with_qdrant:
        try:
            qdrant = _open_qdrant(settings, engines)
        except BaseException:
            await Backends(mongo, redis, None, _embedded_mongo=embedded_mongo).close()
            raise
        remote = settings.qdrant_url not in (None, ":memory:")
        where = qdrant_location(settings.qdrant_url or "") if remote else "this process"
        checks.append(StoreCheck("Qdrant", where, "list collections", qdrant.get_collections))
    backends = Backends(
        mongo=mongo,
        redis=redis,
        qdrant=qdrant,
        qdrant_remote=settings.qdrant_url not in (None, ":memory:"),
        engines=engines,
        checks=checks,
        _embedded_mongo=embedded_mongo,
    )
    for line in engines:  # before waiting: a store that does not answer is named first
        _LOG.info("store: %s", line)
    if settings.qdrant_url == ":memory:" and not dev:
        _LOG.warning("Qdrant is in this process's memory: vectors are lost at exit (tests only)")
    try:
        await wait_for_stores(
            checks,
            bound_s=settings.startup_wait_s,
            log_every_s=settings.store_down_log_s,
            attempt_timeout_s=settings.backend_timeout_s + 1.0,
        )
        await mongo.ensure_indexes()
    except BaseException:
        await backends.close()
        raise
    return backends


@asynccontextmanager
async def mongo_only(settings: Settings, *, dev: bool = False) -> AsyncIterator[MongoStore]:
    """MongoDB alone, for `meshgate bootstrap`, which writes nowhere else: the MongoDB of
    its URL, or with `dev` and without one the embedded engine `serve --dev` uses (same
    data directory), started for the while; waited for like the server's stores, indexes
    made, closed (and the engine stopped) at the end."""
    engine: EmbeddedMongo | None = None
    if settings.mongodb_uri is not None:
        uri = settings.mongodb_uri.reveal()
    elif dev:
        engine = EmbeddedMongo(data_dir=settings.data_dir / "mongo")
        uri = await asyncio.to_thread(engine.start)
    else:
        raise SettingsError(
            "MESHGATE_MONGODB_URI is not set: `meshgate bootstrap` writes to the MongoDB that"
            " `meshgate serve` uses (docs/operations.md#configuration); --dev: the embedded"
            " engine of `meshgate serve --dev`"
        )
    mongo = MongoStore(
        uri=uri,
        database=settings.mongodb_database,
        timeout_ms=int(settings.backend_timeout_s * 1000),
    )
    try:
        check = StoreCheck("MongoDB", mongodb_location(uri), "ping", mongo.ping)
        await wait_for_stores(
            [check],
            bound_s=settings.startup_wait_s,
            log_every_s=settings.store_down_log_s,
            attempt_timeout_s=settings.backend_timeout_s + 1.0,
        )
        await mongo.ensure_indexes()
        yield mongo
    finally:
        await mongo.close()
        if engine is not None:
            await asyncio.to_thread(engine.close)


def _open_qdrant(settings: Settings, engines: list[str]) -> Any:
    from qdrant_client import AsyncQdrantClient

    if settings.qdrant_url is None:
        path = settings.data_dir / "qdrant"
        engines.append(f"Qdrant: qdrant-client's local mode (--dev), data in {path}")
        return AsyncQdrantClient(path=str(path))
    if settings.qdrant_url == ":memory:":
        engines.append(
            "Qdrant: qdrant-client's in-memory local mode (MESHGATE_QDRANT_URL=:memory:),"
            " in this process only: vectors are lost at exit"
        )
        return AsyncQdrantClient(location=":memory:")
    api_key = settings.qdrant_api_key.reveal() if settings.qdrant_api_key else None
    engines.append(f"Qdrant at {qdrant_location(settings.qdrant_url)}")
    return AsyncQdrantClient(
        url=settings.qdrant_url,
        api_key=api_key,
        prefer_grpc=True,
        timeout=int(settings.backend_timeout_s),
    )
