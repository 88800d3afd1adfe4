"""One filter language, one meaning: documents (MongoDB) and points (Qdrant) agree.

The same payloads are stored as document metadata and as point payloads in one
namespace, through the real server; every filter is asked of `ListDocuments` and of
`Search` (a zero query vector and a limit above the number of points, so the filter
alone decides), and the two answers must be the same set. MongoDB's semantics are the
reference: a missing field equals null, a list matches `$eq x` when it holds x, `true`
never equals `1`, `1` equals `1.0`. The last test draws random filters over random
payloads (hypothesis, seeded).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from meshgate.v1 import (
    document_service_pb2,
    document_service_pb2_grpc,
    vector_service_pb2,
    vector_service_pb2_grpc,
)

from tests.support.clients import auth, rpc_error
from tests.support.tenants import Tenant

Payload = dict[str, Any]
SEED = int(os.environ.get("MESHGATE_FILTER_SEED", "20261201"))


def struct(value: Mapping[str, Any]) -> Struct:
    out = Struct()
    out.update(value)
    return out


class Both:
    """One namespace holding each payload twice: as document `p<i>` and as point `p<i>`."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.docs = document_service_pb2_grpc.DocumentServiceStub(tenant.channel)
        self.vectors = vector_service_pb2_grpc.VectorServiceStub(tenant.channel)
        self.md = auth(tenant.admin)

    async def fill(self, payloads: Sequence[Payload]) -> None:
        """A fresh namespace holding `payloads`."""
        name = (await self.tenant.namespace(f"sem-{secrets.token_hex(5)}")).name
        self.md = auth(self.tenant.admin, name)
        store = vector_service_pb2.VectorStore(
            dimension=2, distance=vector_service_pb2.DISTANCE_EUCLID
        )
        await self.vectors.CreateVectorStore(
            vector_service_pb2.CreateVectorStoreRequest(vector_store=store), metadata=self.md
        )
        documents = [
            document_service_pb2.Document(document_id=f"p{i}", metadata=struct(p))
            for i, p in enumerate(payloads)
        ]
        for start in range(0, len(documents), 100):
            await self.docs.BatchCreateDocuments(
                document_service_pb2.BatchCreateDocumentsRequest(
                    requests=[
                        document_service_pb2.CreateDocumentRequest(document=d)
                        for d in documents[start : start + 100]
                    ]
                ),
                metadata=self.md,
            )
        points = [
            vector_service_pb2.Point(id=f"p{i}", vector=[i % 3, 1.0], payload=struct(p))
            for i, p in enumerate(payloads)
        ]
        await self.vectors.UpsertPoints(
            vector_service_pb2.UpsertPointsRequest(points=points), metadata=self.md
        )

    async def documents(self, filter: Mapping[str, Any]) -> set[str]:
        """Every page of ListDocuments (7 a page, so the cursor wraps most queries)."""
        ids: set[str] = set()
        token = ""
        while True:
            request = document_service_pb2.ListDocumentsRequest(
                filter=struct(filter), page_token=token, page_size=7
            )
            page = await self.docs.ListDocuments(request, metadata=self.md)
            ids |= {d.document_id for d in page.documents}
            token = page.next_page_token
            if not token:
                return ids

    async def points(self, filter: Mapping[str, Any]) -> set[str]:
        request = vector_service_pb2.SearchRequest(
            vector=[0.0, 0.0], filter=struct(filter), limit=100
        )
        response = await self.vectors.Search(request, metadata=self.md)
        return {r.point.id for r in response.results}

    async def refusals(self, filter: Mapping[str, Any]) -> tuple[str, str]:
        """(ListDocuments' answer, Search's answer) to a filter both must refuse."""
        documents = await refused(self.documents(filter))
        points = await refused(self.points(filter))
        return documents, points


async def refused(call: Awaitable[object]) -> str:
    error = await rpc_error(call)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return error.details() or ""


@pytest.fixture
def both(tenant: Tenant) -> Both:
    return Both(tenant)


# payloads p0..p9, chosen for the corners where the two stores used to differ
CORNERS: list[Payload] = [
    {},  # p0: f missing
    {"f": None},  # p1
    {"f": "x"},  # p2
    {"f": 1},  # p3
    {"f": 1.5},  # p4
    {"f": True},  # p5
    {"f": False},  # p6
    {"f": 0},  # p7
    {"f": ["x", 2]},  # p8
    {"f": [True, "y"]},  # p9
]


def ids(*numbers: int) -> set[str]:
    return {f"p{n}" for n in numbers}


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"nosuch": {"$ne": None}}, ids()),
        ({"nosuch": None}, ids(*range(10))),
        ({"f": None}, ids(0, 1)),
        ({"f": {"$eq": None}}, ids(0, 1)),
        ({"f": {"$ne": None}}, ids(2, 3, 4, 5, 6, 7, 8, 9)),
        ({"f": {"$in": [None, "x"]}}, ids(0, 1, 2, 8)),
        ({"f": {"$nin": [None]}}, ids(2, 3, 4, 5, 6, 7, 8, 9)),
        ({"f": {"$nin": ["x", 1]}}, ids(0, 1, 4, 5, 6, 7, 9)),
        ({"f": {"$exists": True}}, ids(1, 2, 3, 4, 5, 6, 7, 8, 9)),
        ({"f": {"$exists": False}}, ids(0)),
        ({"f": {"$ne": "x"}}, ids(0, 1, 3, 4, 5, 6, 7, 9)),
        ({"f": "x"}, ids(2, 8)),  # a list matches when it holds the value
        ({"f": 1}, ids(3)),  # true is not 1
        ({"f": 1.0}, ids(3)),  # 1 is 1.0
        ({"f": True}, ids(5, 9)),
        ({"f": False}, ids(6)),  # false is not 0
        ({"f": 0}, ids(7)),
        ({"f": {"$gte": 1}}, ids(3, 4, 8)),  # numbers only, in lists too
        ({"f": {"$lt": 1}}, ids(7)),
        ({"f": {"$gt": 1, "$lt": 2}}, ids(4)),
        ({"f": {"$gt": 1.5, "$lte": 2}}, ids(8)),
    ],
)
async def test_documents_and_points_agree_at_the_corners(
    both: Both, filter: dict[str, Any], expected: set[str]
) -> None:
    await both.fill(CORNERS)
    assert await both.documents(filter) == expected
    assert await both.points(filter) == expected


async def test_four_levels_pass_everywhere_and_a_fifth_is_refused_alike(both: Both) -> None:
    await both.fill([{"a": i % 2, "b": i % 3, "c": i} for i in range(12)])
    leaf = {"a": 1, "c": {"$in": [1, 3, 5, 7, 9, 11]}}
    four = {"b": {"$ne": 7}, "$or": [{"$and": [{"$or": [leaf, {"c": 0}]}, {"c": {"$gte": 0}}]}]}
    expected = ids(0, 1, 3, 5, 7, 9, 11)
    assert await both.documents(four) == expected  # paged by 7: the cursor wraps the query
    assert await both.points(four) == expected
    five = {"$or": [four, {"c": 100}]}
    documents, points = await both.refusals(five)
    assert documents == points == "filter: nested deeper than 4 levels"


@pytest.mark.parametrize(
    "filter",
    [
        {"$or": [{}]},
        {"$and": []},
        {"f": {}},
        {"$and": [{"$or": [{}, {"f": 1}]}]},
        {"$or": [{"f": 1}, {}]},
    ],
)
async def test_empty_clauses_are_refused_alike(both: Both, filter: dict[str, Any]) -> None:
    await both.fill([{"f": 1}])
    documents, points = await both.refusals(filter)
    assert documents == points and documents.startswith("filter:")


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_nan_and_infinity_are_refused_everywhere(both: Both, number: float) -> None:
    await both.fill([{"f": 1}])
    for filter in ({"f": number}, {"f": {"$gt": number}}, {"f": {"$in": [1, number]}}):
        await both.refusals(filter)
    search = vector_service_pb2.SearchRequest(vector=[0, 0], score_threshold=number)
    assert "score_threshold" in await refused(both.vectors.Search(search, metadata=both.md))
    await refused_as_data(both, {"f": number})


@pytest.mark.parametrize("value", [[], [None], ["x", None]])
async def test_lists_hold_values_not_null(both: Both, value: list[Any]) -> None:
    """An empty list or a null inside a list has no single meaning across the two stores
    (Qdrant cannot tell [] from a missing field): refused in documents and points alike."""
    await both.fill([{"f": 1}])
    for details in await refused_as_data(both, {"f": value}):
        assert "lists" in details


async def refused_as_data(both: Both, payload: Payload) -> list[str]:
    """`payload` refused as a point's payload and as a document's metadata."""
    point = vector_service_pb2.Point(id="n", vector=[0, 0], payload=struct(payload))
    document = document_service_pb2.Document(document_id="n", metadata=struct(payload))
    return [
        await refused(
            both.vectors.UpsertPoints(
                vector_service_pb2.UpsertPointsRequest(points=[point]), metadata=both.md
            )
        ),
        await refused(
            both.docs.CreateDocument(
                document_service_pb2.CreateDocumentRequest(document=document), metadata=both.md
            )
        ),
    ]


# -- the differential property ----------------------------------------------------------

FIELDS = ("f", "g", "h")
scalars = st.one_of(
    st.sampled_from(["x", "y", "", "X"]),
    st.sampled_from([0, 1, 2, -1, 1.5, 1e3]),
    st.booleans(),
)
values = st.one_of(st.none(), scalars, st.lists(scalars, min_size=1, max_size=3))
payloads = st.dictionaries(st.sampled_from(FIELDS), values, max_size=3)
numbers = st.sampled_from([0, 1, 1.5, 2, -1])
operand = st.one_of(st.none(), scalars)


def _condition() -> st.SearchStrategy[Any]:
    return st.one_of(
        operand,  # a bare value: $eq
        st.fixed_dictionaries({"$eq": operand}),
        st.fixed_dictionaries({"$ne": operand}),
        st.fixed_dictionaries({"$in": st.lists(operand, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"$nin": st.lists(operand, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"$exists": st.booleans()}),
        st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), numbers, min_size=1),
    )


def _clause(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    fields = st.dictionaries(st.sampled_from(FIELDS), _condition(), min_size=1, max_size=2)
    if depth >= 4:
        return fields
    groups = st.dictionaries(
        st.sampled_from(["$and", "$or"]),
        st.lists(st.deferred(lambda: _clause(depth + 1)), min_size=1, max_size=2),
        min_size=1,
    )
    return st.one_of(fields, groups, st.builds(lambda a, b: {**a, **b}, fields, groups))


filters = _clause(1)


# pymongo takes every wire message's request id from the global `random` while the server
# runs beside hypothesis in this process (see tests/test_isolation_property.py)
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_random_filters_over_random_payloads_agree(both: Both) -> None:
    """Both stores give the same set, or both refuse the filter with the same message (a
    drawn filter may exceed 64 conditions). Hypothesis draws from a worker thread; the
    calls run on the server's event loop."""
    loop = asyncio.get_running_loop()
    answered: list[int] = []

    def outcome(call: Coroutine[Any, Any, set[str]]) -> set[str] | str:
        try:
            return asyncio.run_coroutine_threadsafe(call, loop).result(timeout=60)
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
            return f"refused: {error.details()}"

    @seed(SEED)
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        data=st.lists(payloads, min_size=1, max_size=14),
        asked=st.lists(filters, min_size=1, max_size=5),
    )
    def agree(data: list[Payload], asked: list[dict[str, Any]]) -> None:
        asyncio.run_coroutine_threadsafe(both.fill(CORNERS + data), loop).result(timeout=60)
        for filter in asked:
            documents, points = outcome(both.documents(filter)), outcome(both.points(filter))
            assert documents == points, f"filter {filter}: documents {documents}, points {points}"
            if isinstance(documents, set):
                answered.append(len(documents))

    await asyncio.to_thread(agree)
    assert len(answered) >= 20  # most drawn filters are answered, not refused
