"""Vectors of one namespace in Qdrant: one collection per namespace, filtered anyway.

The collection is `ns_<namespace_id>`. Every point's payload carries
namespace_id, and every search, scroll, count and delete adds a `must`
condition on it, so even a mix-up of collection names could not cross a
namespace. Point ids are the caller's strings, mapped to UUIDv5 per namespace
(Qdrant wants UUIDs or integers); the original id travels in `point_id`.

On a distributed Qdrant each collection is created with the deployment's
`CollectionLayout` (shards, replicas, write consistency); local mode has one
node and no such layout.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError
from qdrant_client import AsyncQdrantClient, models

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.backends.tracing import client_span
from storage.core.cache import TTLCache
from storage.core.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from storage.core.filters import Group
from storage.core.ids import check_client_id
from storage.data.qdrant_filters import to_qdrant

__all__ = [
    "DISTANCES",
    "MAX_DIMENSION",
    "CollectionLayout",
    "Hit",
    "StoredPoint",
    "VectorConfig",
    "VectorStore",
    "check_point_id",
    "check_vector",
    "collection_name",
]

MAX_DIMENSION = 4096
_FLOAT32_MAX = 3.4028234663852886e38
DISTANCES = {
    "cosine": models.Distance.COSINE,
    "dot": models.Distance.DOT,
    "euclid": models.Distance.EUCLID,
}
_POINT_NAMESPACE = uuid.UUID("6b1f4f0e-8d0c-4d7e-9a4b-3c6f0e2a9d51")


def collection_name(namespace_id: str) -> str:
    return f"ns_{namespace_id}"


def qdrant_id(namespace_id: str, point_id: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{namespace_id}/{point_id}"))


@dataclass(frozen=True, slots=True)
class CollectionLayout:
    """How each `ns_` collection spreads over a distributed Qdrant; None leaves Qdrant's
    default (one shard per node, no replica, writes acknowledged by one replica)."""

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None


@dataclass(frozen=True, slots=True)
class VectorConfig:
    dimension: int
    distance: str


@dataclass(frozen=True, slots=True)
class StoredPoint:
    point_id: str
    vector: list[float] | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hit:
    point: StoredPoint
    score: float


def check_vector(vector: Sequence[float], dimension: int, *, what: str = "vector") -> list[float]:
    if len(vector) != dimension:
        raise InvalidArgumentError(
            f"{what} has {len(vector)} dimensions; this namespace's vector store has {dimension}",
            field=what,
        )
    values = [float(v) for v in vector]
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"{what} contains NaN or infinity", field=what)
    # Qdrant keeps 32-bit floats and normalizes cosine vectors in them: a larger value, or
    # a squared length beyond the largest 32-bit float, would be stored as infinity or NaN
    if math.fsum(v * v for v in values) > _FLOAT32_MAX:
        raise InvalidArgumentError(
            f"{what} is too long (its squared length passes 3.4e38)", field=what
        )
    return values


def check_point_id(point_id: str) -> str:
    return check_client_id(point_id, what="point ids")


def _point(record: Any) -> StoredPoint:
    payload = dict(record.payload or {})
    payload.pop("namespace_id", None)
    point_id = str(payload.pop("point_id", ""))
    vector = record.vector if isinstance(record.vector, list) else None
    return StoredPoint(point_id=point_id, vector=vector, payload=payload)


class VectorStore:
    """Vector-store configs in MongoDB (scoped), points in Qdrant (per-namespace collections)."""

    CONFIGS = "vector_stores"

    def __init__(
        self,
        *,
        mongo: MongoStore,
        qdrant: AsyncQdrantClient,
        payload_index: bool,
        layout: CollectionLayout | None = None,
    ) -> None:
        self._mongo = mongo
        self._qdrant = qdrant
        self._payload_index = payload_index
        self._layout = layout or CollectionLayout()
        self._configs: TTLCache[str, VectorConfig] = TTLCache(ttl_s=60.0, max_entries=10_000)

    def forget(self, namespace_id: str) -> None:
        self._configs.pop(namespace_id)

    @staticmethod
    def _namespace_filter(scope: Scope, *extra: models.Condition) -> models.Filter:
        own = models.FieldCondition(
            key="namespace_id", match=models.MatchValue(value=scope.namespace_id)
        )
        return models.Filter(must=[own, *extra])

    async def create(self, scope: Scope, *, dimension: int, distance: str) -> VectorConfig:
        if not 1 <= dimension <= MAX_DIMENSION:
            raise InvalidArgumentError(
                f"dimension must be between 1 and {MAX_DIMENSION}", field="vector_store.dimension"
            )
        configs = self._mongo.scoped(self.CONFIGS, scope)
        existing = await configs.find_one({})
        if existing is not None:
            raise AlreadyExistsError("this namespace already has a vector store")
        name = collection_name(scope.namespace_id)
        if await self._qdrant.collection_exists(name):
            # left by a create that crashed before writing its config: it holds no points
            await self._qdrant.delete_collection(name)
        await self._qdrant.create_collection(
            name,
            vectors_config=models.VectorParams(size=dimension, distance=DISTANCES[distance]),
            shard_number=self._layout.shard_number,
            replication_factor=self._layout.replication_factor,
            write_consistency_factor=self._layout.write_consistency_factor,
        )
        if self._payload_index:
            await self._qdrant.create_payload_index(
                name, "namespace_id", models.PayloadSchemaType.KEYWORD
            )
        # the config is written last: a crash before it leaves a retryable empty collection
        try:
            await configs.insert_one({"dimension": dimension, "distance": distance})
        except DuplicateKeyError:
            raise AlreadyExistsError("this namespace already has a vector store") from None
        config = VectorConfig(dimension, distance)
        self._configs.put(scope.namespace_id, config)
        return config

    async def config(self, scope: Scope) -> VectorConfig:
        cached = self._configs.get(scope.namespace_id)
        if cached is not None:
            return cached
        doc = await self._mongo.scoped(self.CONFIGS, scope).find_one({})
        if doc is None:
            raise FailedPreconditionError(
                "this namespace has no vector store yet; call VectorService/CreateVectorStore"
            )
        config = VectorConfig(int(doc["dimension"]), str(doc["distance"]))
        self._configs.put(scope.namespace_id, config)
        return config

    async def upsert(
        self, scope: Scope, points: Sequence[tuple[str, Sequence[float], Mapping[str, Any]]]
    ) -> int:
        config = await self.config(scope)
        structs = []
        for point_id, vector, payload in points:
            structs.append(
                models.PointStruct(
                    id=qdrant_id(scope.namespace_id, check_point_id(point_id)),
                    vector=check_vector(vector, config.dimension, what=f"point {point_id!r}"),
                    payload={**payload, "namespace_id": scope.namespace_id, "point_id": point_id},
                )
            )
        with client_span(
            "qdrant", "upsert", **{"db.collection.name": collection_name(scope.namespace_id)}
        ):
            await self._qdrant.upsert(
                collection_name(scope.namespace_id), points=structs, wait=True
            )
        return len(structs)

    async def search(
        self,
        scope: Scope,
        *,
        vector: Sequence[float],
        tree: Group | None,
        limit: int,
        score_threshold: float | None,
        with_vectors: bool,
    ) -> list[Hit]:
        config = await self.config(scope)
        with client_span("qdrant", "query_points"):
            response = await self._qdrant.query_points(
                collection_name(scope.namespace_id),
                query=check_vector(vector, config.dimension),
                query_filter=self._namespace_filter(scope, *to_qdrant(tree)),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [Hit(point=_point(p), score=float(p.score)) for p in response.points]

    async def get(
        self, scope: Scope, ids: Sequence[str], *, with_vectors: bool
    ) -> list[StoredPoint]:
        await self.config(scope)
        wanted: list[int | str | uuid.UUID] = [
            qdrant_id(scope.namespace_id, check_point_id(i)) for i in ids
        ]
        with client_span("qdrant", "scroll"):
            records, _ = await self._qdrant.scroll(
                collection_name(scope.namespace_id),
                scroll_filter=self._namespace_filter(scope, models.HasIdCondition(has_id=wanted)),
                limit=len(wanted),
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [_point(r) for r in records]

    async def page(
        self, scope: Scope, *, offset: str | None, limit: int
    ) -> tuple[list[StoredPoint], str | None]:
        """Points with vectors and payloads in Qdrant's id order, and where the next page
        starts (None after the last); for backups (storage/data/backup.py)."""
        await self.config(scope)
        with client_span("qdrant", "scroll"):
            records, next_offset = await self._qdrant.scroll(
                collection_name(scope.namespace_id),
                scroll_filter=self._namespace_filter(scope),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=True,
            )
        return [_point(r) for r in records], None if next_offset is None else str(next_offset)

    async def count(self, scope: Scope) -> int:
        await self.config(scope)
        result = await self._qdrant.count(
            collection_name(scope.namespace_id),
            count_filter=self._namespace_filter(scope),
            exact=True,
        )
        return int(result.count)

    async def delete(self, scope: Scope, ids: Sequence[str]) -> int:
        await self.config(scope)
        wanted: list[int | str | uuid.UUID] = [
            qdrant_id(scope.namespace_id, check_point_id(i)) for i in ids
        ]
        selector = self._namespace_filter(scope, models.HasIdCondition(has_id=wanted))
        name = collection_name(scope.namespace_id)
        present = await self._qdrant.count(name, count_filter=selector, exact=True)
        await self._qdrant.delete(
            name, points_selector=models.FilterSelector(filter=selector), wait=True
        )
        return int(present.count)

    async def drop(self, namespace_id: str) -> None:
        """Idempotent: removing a missing collection is fine."""
        self.forget(namespace_id)
        name = collection_name(namespace_id)
        if await self._qdrant.collection_exists(name):
            await self._qdrant.delete_collection(name)
