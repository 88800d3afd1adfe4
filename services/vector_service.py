"""VectorService: the namespace's vector store in Qdrant."""

from __future__ import annotations

import math
from typing import Any

from meshgate.v1 import vector_service_pb2 as pb
from meshgate.v1 import vector_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import dict_to_struct, struct_to_dict
from storage.core.errors import InvalidArgumentError
from storage.core.filters import parse_filter
from storage.data.documents import check_metadata
from storage.data.vectors import StoredPoint, VectorConfig, VectorStore

__all__ = ["MAX_POINTS", "MAX_SEARCH_LIMIT", "VectorServicer"]

MAX_POINTS = 256
MAX_SEARCH_LIMIT = 100
DEFAULT_SEARCH_LIMIT = 10
_DISTANCES = {
    pb.DISTANCE_COSINE: "cosine",
    pb.DISTANCE_DOT: "dot",
    pb.DISTANCE_EUCLID: "euclid",
}
_DISTANCES_BACK = {v: k for k, v in _DISTANCES.items()}


def _store_to_proto(config: VectorConfig) -> pb.VectorStore:
    return pb.VectorStore(dimension=config.dimension, distance=_DISTANCES_BACK[config.distance])


def _point_to_proto(point: StoredPoint) -> pb.Point:
    return pb.Point(
        id=point.point_id, vector=point.vector or [], payload=dict_to_struct(point.payload)
    )


def _ids(ids: list[str]) -> list[str]:
    if not 1 <= len(ids) <= MAX_POINTS:
        raise InvalidArgumentError(f"ids must hold 1-{MAX_POINTS} ids", field="ids")
    return ids


class VectorServicer(pb_grpc.VectorServiceServicer):
    def __init__(self, *, vectors: VectorStore) -> None:
        self._vectors = vectors

    async def CreateVectorStore(
        self, request: pb.CreateVectorStoreRequest, context: Any
    ) -> pb.CreateVectorStoreResponse:
        scope = current_call.get().require_scope()
        distance = _DISTANCES.get(request.vector_store.distance)
        if distance is None:
            raise InvalidArgumentError(
                "distance must be DISTANCE_COSINE, DISTANCE_DOT or DISTANCE_EUCLID",
                field="vector_store.distance",
            )
        config = await self._vectors.create(
            scope, dimension=request.vector_store.dimension, distance=distance
        )
        return pb.CreateVectorStoreResponse(vector_store=_store_to_proto(config))

    async def GetVectorStore(
        self, request: pb.GetVectorStoreRequest, context: Any
    ) -> pb.GetVectorStoreResponse:
        scope = current_call.get().require_scope()
        return pb.GetVectorStoreResponse(
            vector_store=_store_to_proto(await self._vectors.config(scope))
        )

    async def UpsertPoints(
        self, request: pb.UpsertPointsRequest, context: Any
    ) -> pb.UpsertPointsResponse:
        scope = current_call.get().require_scope()
        if not 1 <= len(request.points) <= MAX_POINTS:
            raise InvalidArgumentError(f"points must hold 1-{MAX_POINTS} points", field="points")
        if len({p.id for p in request.points}) != len(request.points):
            raise InvalidArgumentError("points name the same id twice", field="points")
        points = []
        for i, point in enumerate(request.points):
            payload = struct_to_dict(point.payload)
            check_metadata(payload, what=f"points[{i}].payload")
            points.append((point.id, list(point.vector), payload))
        return pb.UpsertPointsResponse(upserted=await self._vectors.upsert(scope, points))

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        scope = current_call.get().require_scope()
        limit = request.limit or DEFAULT_SEARCH_LIMIT
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise InvalidArgumentError(
                f"limit must be between 1 and {MAX_SEARCH_LIMIT}", field="limit"
            )
        tree = parse_filter(struct_to_dict(request.filter)) if request.HasField("filter") else None
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        if threshold is not None and not math.isfinite(threshold):
            raise InvalidArgumentError(
                "score_threshold must be a finite number", field="score_threshold"
            )
        hits = await self._vectors.search(
            scope,
            vector=list(request.vector),
            tree=tree,
            limit=limit,
            score_threshold=threshold,
            with_vectors=request.with_vectors,
        )
        return pb.SearchResponse(
            results=[pb.ScoredPoint(point=_point_to_proto(h.point), score=h.score) for h in hits]
        )

    async def GetPoints(self, request: pb.GetPointsRequest, context: Any) -> pb.GetPointsResponse:
        scope = current_call.get().require_scope()
        points = await self._vectors.get(
            scope, _ids(list(request.ids)), with_vectors=request.with_vectors
        )
        return pb.GetPointsResponse(points=[_point_to_proto(p) for p in points])

    async def DeletePoints(
        self, request: pb.DeletePointsRequest, context: Any
    ) -> pb.DeletePointsResponse:
        scope = current_call.get().require_scope()
        return pb.DeletePointsResponse(
            deleted=await self._vectors.delete(scope, _ids(list(request.ids)))
        )
