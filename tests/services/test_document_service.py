"""DocumentService through the real server: CRUD, filters, paging, limits, isolation."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from meshgate.v1 import document_service_pb2 as pb
from meshgate.v1 import options_pb2

from services.convert import struct_to_dict
from tests.support.namespace_clients import Docs, doc, struct
from tests.support.tenants import Tenant


@pytest.fixture
async def docs(tenant: Tenant) -> Docs:
    ns = await tenant.namespace()
    return Docs(tenant, ns.name)


async def test_create_get_update_delete(docs: Docs) -> None:
    created = await docs.create(doc(body={"title": "hello", "n": [1, 2]}, color="red", size=3))
    assert created.document_id.startswith("doc_") and created.revision == 1
    got = await docs.stub.GetDocument(
        pb.GetDocumentRequest(document_id=created.document_id), metadata=docs.md
    )
    assert got.document == created
    change = doc(created.document_id, body={"ignored": True}, color="blue")
    updated = await docs.stub.UpdateDocument(
        pb.UpdateDocumentRequest(
            document=change, update_mask=FieldMask(paths=["metadata.color", "metadata.size"])
        ),
        metadata=docs.md,
    )
    assert dict(updated.document.metadata) == {"color": "blue"}  # size removed: in the mask, absent
    assert dict(updated.document.body)["title"] == "hello"  # body not in the mask
    assert updated.document.revision == 2
    await docs.stub.DeleteDocument(
        pb.DeleteDocumentRequest(document_id=created.document_id), metadata=docs.md
    )
    error = await docs.error(
        docs.stub.GetDocument(
            pb.GetDocumentRequest(document_id=created.document_id), metadata=docs.md
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await docs.error(
        docs.stub.DeleteDocument(
            pb.DeleteDocumentRequest(document_id=created.document_id), metadata=docs.md
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_caller_ids_are_per_namespace(tenant: Tenant) -> None:
    a = Docs(tenant, (await tenant.namespace()).name)
    b = Docs(tenant, (await tenant.namespace()).name)
    await a.create(doc("invoice-1", owner="a"))
    await b.create(doc("invoice-1", owner="b"))  # same id, other namespace: no conflict, no oracle
    error = await a.error(a.create(doc("invoice-1")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    got = await b.stub.GetDocument(pb.GetDocumentRequest(document_id="invoice-1"), metadata=b.md)
    assert dict(got.document.metadata) == {"owner": "b"}


async def test_filters(docs: Docs) -> None:
    for i in range(12):
        await docs.create(
            doc(f"d{i:02}", size=i, color=["red", "green", "blue"][i % 3], even=i % 2 == 0)
        )
    await docs.create(doc("plain"))
    assert await docs.list_ids({"color": "red"}) == ["d00", "d03", "d06", "d09"]
    assert await docs.list_ids({"size": {"$gte": 4, "$lt": 7}}) == ["d04", "d05", "d06"]
    assert await docs.list_ids({"color": {"$in": ["green", "blue"]}, "even": True}) == [
        "d02",
        "d04",
        "d08",
        "d10",
    ]
    assert await docs.list_ids({"$or": [{"size": 1}, {"size": {"$gt": 10}}]}) == ["d01", "d11"]
    assert await docs.list_ids({"size": {"$exists": False}}) == ["plain"]
    assert await docs.list_ids({"color": {"$ne": "red"}, "size": {"$exists": True}}) == [
        f"d{i:02}" for i in range(12) if i % 3
    ]
    assert await docs.list_ids(page_size=5) == [f"d{i:02}" for i in range(12)] + ["plain"]


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ({"$where": "sleep(1000)"}, "not allowed"),
        ({"$expr": {"$gt": ["$a", "$b"]}}, "not allowed"),
        ({"$function": {"body": "x"}}, "not allowed"),
        ({"a": {"$where": "1"}}, "not allowed"),
        ({"a": {"$regex": ".*"}}, "not allowed"),
        ({"namespace_id": "ns_x"}, "reserved"),
        ({"$or": [{"namespace_id": {"$exists": True}}]}, "reserved"),
        ({"internal_id": {"$ne": None}}, "reserved"),
        ({"a.b": 1}, "must be 1-64"),
        ({"$and": [{"$and": [{"$and": [{"$and": [{"$and": [{"a": 1}]}]}]}]}]}, "deeper"),
        ({"a": {"$in": list(range(101))}}, "at most 100"),
        ({"a": [1, 2]}, "$in"),
        ({"a": {"$gt": "x"}}, "needs a number"),
        ({f"f{i}": i for i in range(65)}, "more than 64"),
    ],
)
async def test_adversarial_filters_are_refused(
    docs: Docs, filter: dict[str, Any], message: str
) -> None:
    request = pb.ListDocumentsRequest(filter=struct(filter))
    error = await docs.error(docs.stub.ListDocuments(request, metadata=docs.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("filter: ")
    assert message in (error.details() or "")


async def test_batch_is_all_or_nothing(docs: Docs) -> None:
    await docs.create(doc("taken"))
    good = [pb.CreateDocumentRequest(document=doc(f"b{i}")) for i in range(3)]
    for bad in (
        pb.CreateDocumentRequest(document=doc("taken")),
        pb.CreateDocumentRequest(document=doc("b0")),
        pb.CreateDocumentRequest(document=doc("x", body={"$set": 1})),
        pb.CreateDocumentRequest(document=doc("y", namespace_id="ns_other")),
    ):
        error = await docs.error(
            docs.stub.BatchCreateDocuments(
                pb.BatchCreateDocumentsRequest(requests=[*good, bad]), metadata=docs.md
            )
        )
        assert error.code() in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT)
        assert await docs.list_ids() == ["taken"]  # nothing half-written
    made = await docs.stub.BatchCreateDocuments(
        pb.BatchCreateDocumentsRequest(requests=good), metadata=docs.md
    )
    assert [d.document_id for d in made.documents] == ["b0", "b1", "b2"]
    error = await docs.error(
        docs.stub.BatchCreateDocuments(
            pb.BatchCreateDocumentsRequest(requests=[pb.CreateDocumentRequest()] * 101),
            metadata=docs.md,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "1-100" in (error.details() or "")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (doc(body={"$where": 1}), "may not start with '$'"),
        (doc(body={"a.b": 1}), "contain '.'"),
        (doc(body={"nested": {"internal_id": "x"}}), "reserved"),
        (doc(namespace_id="ns_x"), "reserved"),
        (pb.Document(metadata=struct({"bad key": 1})), "keys must be"),
        (doc(nested={"a": 1}), "values must be"),
        (doc(body={"blob": "x" * (257 * 1024)}), "256 KiB"),
        (doc("bad id!"), "document_id"),
        (pb.Document(metadata=struct({f"k{i}": i for i in range(65)})), "at most 64 keys"),
    ],
)
async def test_bad_documents_are_refused(docs: Docs, document: pb.Document, message: str) -> None:
    error = await docs.error(docs.create(document))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
    assert await docs.list_ids() == []


def nested(levels: int) -> dict[str, Any]:
    body: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        body = {"n": body}
    return body


async def test_documented_limits_hold_end_to_end(docs: Docs) -> None:
    """32 levels of nesting and bodies of thousands of values are stored as documented."""
    deep = await docs.create(doc("deep", body=nested(32)))
    wide = await docs.create(doc("wide", body={"xs": list(range(5_000))}))
    got = await docs.stub.GetDocument(pb.GetDocumentRequest(document_id="deep"), metadata=docs.md)
    assert struct_to_dict(got.document.body) == struct_to_dict(deep.body) == nested(32)
    assert len(struct_to_dict(wide.body)["xs"]) == 5_000
    error = await docs.error(docs.create(doc("deeper", body=nested(33))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "32 levels" in (error.details() or "")


async def test_update_mask_is_validated(docs: Docs) -> None:
    created = await docs.create(doc("u1", a=1))
    for paths in ([], ["title"], ["metadata."], ["metadata.namespace_id"], ["body.x"]):
        error = await docs.error(
            docs.stub.UpdateDocument(
                pb.UpdateDocumentRequest(document=doc("u1"), update_mask=FieldMask(paths=paths)),
                metadata=docs.md,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
    got = await docs.stub.GetDocument(pb.GetDocumentRequest(document_id="u1"), metadata=docs.md)
    assert got.document == created


async def test_permissions_per_method(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    writer = await tenant.key(options_pb2.PERMISSION_WRITE)
    r, w = Docs(tenant, ns.name, reader.secret), Docs(tenant, ns.name, writer.secret)
    assert (await r.error(r.create(doc("x")))).code() == grpc.StatusCode.PERMISSION_DENIED
    await w.create(doc("x"))
    assert await r.list_ids() == ["x"]
    error = await w.error(
        w.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="x"), metadata=w.md)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_updates_cannot_grow_a_document_past_the_limit(docs: Docs) -> None:
    """The review stored a 1.5 MB document with `metadata.<key>` updates, each request under
    256 KiB. Now the merged document is checked after every merge, and metadata strings
    are capped, so no request can carry one large value either."""
    await docs.create(doc("grow", body={"title": "small"}))
    chunk = ["x" * 1000] * 100  # 100 values of 1,000 characters: about 100 KB per key

    def update(*paths: str, **metadata: Any) -> Any:
        return docs.stub.UpdateDocument(
            pb.UpdateDocumentRequest(
                document=doc("grow", **metadata), update_mask=FieldMask(paths=list(paths))
            ),
            metadata=docs.md,
        )

    await update("metadata.a", a=chunk)
    await update("metadata.b", b=chunk)
    error = await docs.error(update("metadata.c", c=chunk))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the updated document is larger than 256 KiB" in (error.details() or "")
    # a body update is checked against the stored metadata too
    await update("body")  # an empty body fits
    error = await docs.error(
        docs.stub.UpdateDocument(
            pb.UpdateDocumentRequest(
                document=doc("grow", body={"blob": "y" * (100 * 1024)}),
                update_mask=FieldMask(paths=["body"]),
            ),
            metadata=docs.md,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = await docs.stub.GetDocument(pb.GetDocumentRequest(document_id="grow"), metadata=docs.md)
    assert got.document.ByteSize() <= 256 * 1024
    assert sorted(got.document.metadata) == ["a", "b"]
    for call in (docs.create(doc("long", s="z" * 1025)), update("metadata.s", s="z" * 1025)):
        error = await docs.error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 1024 characters" in (error.details() or "")


async def test_a_response_over_the_message_limit_is_refused_whole(docs: Docs) -> None:
    """A response holds at most MESHGATE_MAX_MESSAGE_BYTES (4 MiB): a page of large
    documents past it is RESOURCE_EXHAUSTED, never cut short; a smaller page_size reads it."""
    blob = {"blob": "y" * (250 * 1024)}
    for batch in range(3):
        requests = [
            pb.CreateDocumentRequest(document=doc(f"big{batch}-{i}", body=blob)) for i in range(6)
        ]
        await docs.stub.BatchCreateDocuments(
            pb.BatchCreateDocumentsRequest(requests=requests), metadata=docs.md
        )
    error = await docs.error(
        docs.stub.ListDocuments(pb.ListDocumentsRequest(page_size=50), metadata=docs.md)
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")
    page = await docs.stub.ListDocuments(pb.ListDocumentsRequest(page_size=9), metadata=docs.md)
    assert len(page.documents) == 9 and page.next_page_token
