"""VectorService through the real server and qdrant-client: isolation, limits, filters."""

from __future__ import annotations

import math

import grpc
import pytest
from meshgate.v1 import vector_service_pb2 as pb

from tests.support.namespace_clients import Vectors, point
from tests.support.tenants import MakeTenant, Tenant


async def make_vectors(tenant: Tenant, dimension: int = 3) -> Vectors:
    v = Vectors(tenant, (await tenant.namespace()).name)
    await v.create(dimension)
    return v


async def test_point_in_one_namespace_never_found_from_another(make_tenant: MakeTenant) -> None:
    alice = await make_tenant()
    mallory = await make_tenant()
    a1, a2, m = await make_vectors(alice), await make_vectors(alice), await make_vectors(mallory)
    same = [0.6, 0.8, 0.0]
    await a1.upsert(point("p1", same, owner="a1"))
    await a2.upsert(point("p1", same, owner="a2"))  # identical id and vector, other namespace
    await m.upsert(point("p1", same, owner="m"))
    for v, owner in ((a1, "a1"), (a2, "a2"), (m, "m")):
        hits = await v.search(same, limit=100)
        assert [(h.point.id, dict(h.point.payload)) for h in hits] == [("p1", {"owner": owner})]
        got = await v.stub.GetPoints(pb.GetPointsRequest(ids=["p1"]), metadata=v.md)
        assert [dict(p.payload) for p in got.points] == [{"owner": owner}]
    # deleting p1 in one namespace leaves the others
    assert (
        await a1.stub.DeletePoints(pb.DeletePointsRequest(ids=["p1"]), metadata=a1.md)
    ).deleted == 1
    assert await a1.search(same) == []
    assert len(await a2.search(same)) == 1 and len(await m.search(same)) == 1


async def test_search_filters_threshold_and_vectors(tenant: Tenant) -> None:
    v = await make_vectors(tenant)
    await v.upsert(
        point("x", [1, 0, 0], kind="a", n=1),
        point("y", [0.9, 0.1, 0], kind="b", n=2),
        point("z", [0, 1, 0], kind="a", n=3),
    )
    assert [h.point.id for h in await v.search([1, 0, 0])] == ["x", "y", "z"]
    assert [h.point.id for h in await v.search([1, 0, 0], {"kind": "a"})] == ["x", "z"]
    assert [h.point.id for h in await v.search([1, 0, 0], {"n": {"$gte": 2}})] == ["y", "z"]
    assert [h.point.id for h in await v.search([1, 0, 0], {"kind": {"$in": ["b"]}})] == ["y"]
    assert [h.point.id for h in await v.search([1, 0, 0], score_threshold=0.5)] == ["x", "y"]
    hit = (await v.search([1, 0, 0], limit=1, with_vectors=True))[0]
    assert hit.point.id == "x" and list(hit.point.vector) == pytest.approx([1, 0, 0])
    assert math.isclose(hit.score, 1.0, rel_tol=1e-5)
    error = await v.error(v.search([1, 0, 0], {"namespace_id": "ns_other"}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "reserved" in (
        error.details() or ""
    )


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([point("a", [1, 2])], "has 2 dimensions"),
        ([point("a", [1, 2, float("nan")])], "NaN"),
        ([point("a", [1, 2, float("inf")])], "NaN or infinity"),
        # Qdrant normalizes cosine vectors in 32-bit floats: this one's length overflows
        ([point("a", [2e19, 2e19, 1])], "too long"),
        # as much as a document, and what a backup file's line can hold
        ([point("a", [1, 2, 3], **{f"k{k}": ["x" * 1000] * 100 for k in range(3)})], "256 KiB"),
        ([point("a", [1, 2, 3], namespace_id="ns_x")], "reserved"),
        ([point("a", [1, 2, 3], point_id="other")], "reserved"),
        ([point("bad id", [1, 2, 3])], "point ids"),
        ([point("a", [1, 2, 3]), point("a", [1, 2, 3])], "same id twice"),
        ([], "1-256"),
        ([point(f"p{i}", [1, 2, 3]) for i in range(257)], "1-256"),
    ],
)
async def test_bad_points_are_refused_and_nothing_written(
    tenant: Tenant, points: list[pb.Point], message: str
) -> None:
    v = await make_vectors(tenant)
    await v.upsert(point("keep", [1, 1, 1]))
    batch = [point("ok", [1, 0, 0]), *points] if points else []  # a valid point rides along
    error = await v.error(v.stub.UpsertPoints(pb.UpsertPointsRequest(points=batch), metadata=v.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in (error.details() or "")
    assert [h.point.id for h in await v.search([1, 1, 1], limit=100)] == ["keep"]


async def test_vector_store_lifecycle_errors(tenant: Tenant) -> None:
    v = Vectors(tenant, (await tenant.namespace()).name)
    error = await v.error(v.search([1, 0, 0]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "CreateVectorStore" in (
        error.details() or ""
    )
    for dimension, distance in (
        (0, pb.DISTANCE_COSINE),
        (5000, pb.DISTANCE_COSINE),
        (3, pb.DISTANCE_UNSPECIFIED),
    ):
        error = await v.error(v.create(dimension, distance))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await v.create(4, pb.DISTANCE_EUCLID)).dimension == 4
    got = await v.stub.GetVectorStore(pb.GetVectorStoreRequest(), metadata=v.md)
    assert got.vector_store == pb.VectorStore(dimension=4, distance=pb.DISTANCE_EUCLID)
    error = await v.error(v.create(4))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = await v.error(v.search([1, 0, 0]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "4" in (error.details() or "")
    error = await v.error(v.search([1, 0, 0, 0], limit=101))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_and_delete_take_at_most_256_ids(tenant: Tenant) -> None:
    """The id batches of GetPoints and DeletePoints are bounded like UpsertPoints' points."""
    v = await make_vectors(tenant)
    await v.upsert(point("keep", [1, 1, 1]))
    too_many = ["keep", *(f"p{i}" for i in range(256))]
    for call in (
        v.stub.GetPoints(pb.GetPointsRequest(ids=too_many), metadata=v.md),
        v.stub.DeletePoints(pb.DeletePointsRequest(ids=too_many), metadata=v.md),
        v.stub.DeletePoints(pb.DeletePointsRequest(ids=[]), metadata=v.md),
    ):
        error = await v.error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1-256" in (error.details() or "")
    got = await v.stub.GetPoints(pb.GetPointsRequest(ids=too_many[:256]), metadata=v.md)
    assert [p.id for p in got.points] == ["keep"]
