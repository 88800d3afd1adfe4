"""Connecting the stores: real servers from settings, embedded engines otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from server.embedded import EmbeddedMongo, embedded_redis
from server.settings import Settings
from storage.backends.mongo import MongoStore
from storage.backends.redis_client import ClusterClient, RedisClient

__all__ = ["Backends", "open_backends", "open_redis"]

_LOG = logging.getLogger("meshgate.backends")


@dataclass
class Backends:
    mongo: MongoStore
    redis: RedisClient
    qdrant: Any
    qdrant_remote: bool = False
    embedded: list[str] = field(default_factory=list)
    _embedded_mongo: EmbeddedMongo | None = None

    async def close(self) -> None:
        await self.mongo.close()
        await self.redis.aclose()
        if self.qdrant is not None:
            await self.qdrant.close()
        if self._embedded_mongo is not None:
            self._embedded_mongo.close()


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


async def open_backends(settings: Settings, *, with_qdrant: bool = True) -> Backends:
    embedded: list[str] = []
    embedded_mongo: EmbeddedMongo | None = None
    timeout_s = settings.backend_timeout_s
    # Redis first: a missing embedded engine is refused before MongoDB's is started
    redis: RedisClient
    if settings.redis_url is not None:
        redis = open_redis(
            settings.redis_url.reveal(), cluster=settings.redis_cluster, timeout_s=timeout_s
        )
    else:
        redis = embedded_redis()
        embedded.append("Redis: in-process fakeredis (single replica only)")
    if settings.mongodb_uri is not None:
        mongo_uri = settings.mongodb_uri.reveal()
    else:
        path = settings.data_dir / "mongo"
        embedded_mongo = EmbeddedMongo(data_dir=path)
        mongo_uri = embedded_mongo.start()
        embedded.append(f"MongoDB: embedded SecantusDB engine on {mongo_uri} (data in {path})")
    mongo = MongoStore(
        uri=mongo_uri, database=settings.mongodb_database, timeout_ms=int(timeout_s * 1000)
    )
    qdrant: Any = None
    if with_qdrant:
        from qdrant_client import AsyncQdrantClient

        if settings.qdrant_url is None:
            path = settings.data_dir / "qdrant"
            qdrant = AsyncQdrantClient(path=str(path))
            embedded.append(f"Qdrant: qdrant-client local mode (data in {path})")
        elif settings.qdrant_url == ":memory:":
            qdrant = AsyncQdrantClient(location=":memory:")
            embedded.append("Qdrant: qdrant-client in-memory local mode")
        else:
            api_key = settings.qdrant_api_key.reveal() if settings.qdrant_api_key else None
            qdrant = AsyncQdrantClient(
                url=settings.qdrant_url, api_key=api_key, prefer_grpc=True, timeout=int(timeout_s)
            )
    await mongo.ensure_indexes()
    return Backends(
        mongo=mongo,
        redis=redis,
        qdrant=qdrant,
        qdrant_remote=settings.qdrant_url not in (None, ":memory:"),
        embedded=embedded,
        _embedded_mongo=embedded_mongo,
    )
