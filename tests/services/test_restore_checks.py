"""What a restore checks, through the real server: every item as the API checks it (the
document size included), and only values the stores can hold, so a file is refused
whole before anything is written, never half-written (issue 21, items 5 and 6); and the
largest items the API accepts still restore."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from meshgate.v1 import document_service_pb2 as doc_pb

from storage.data.documents import MAX_DOCUMENT_BYTES, MAX_PAYLOAD_BYTES
from tests.support.backups import (
    comparable,
    document_line,
    export_namespace,
    file_items,
    file_of_lines,
    import_namespace,
)
from tests.support.clients import rpc_error
from tests.support.namespace_clients import Docs, Vectors, doc, point
from tests.support.tenants import Tenant

KIB = 1024


@pytest.mark.parametrize(
    ("size", "refusal"),
    [
        (3 * KIB * KIB, "a line is longer than 2097152 bytes"),  # the review's document
        (300 * KIB, "is larger than 256 KiB"),  # within a line, over the API's limit
    ],
)
async def test_a_document_larger_than_the_api_allows_is_refused_and_nothing_written(
    tenant: Tenant, size: int, refusal: str
) -> None:
    """The 256 KiB limit lived in the API only: a 3 MiB document was restored."""
    lines = [document_line("small", {"a": 1}), document_line("big", {"blob": "x" * size})]
    target = (await tenant.namespace()).namespace_id
    error = await rpc_error(import_namespace(tenant, target, file_of_lines(lines)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal in (error.details() or "")
    assert "nothing was written" in (error.details() or "")
    assert await Docs(tenant, target).list_ids() == []


def with_raw(line: bytes, placeholder: str, raw: bytes) -> bytes:
    """The line with a JSON string placeholder replaced by raw JSON text."""
    return line.replace(json.dumps(placeholder).encode(), raw)


# values the check let through and the write refused (BSON has no integer beyond 64 bits),
# or that are no JSON numbers at all; in a body, in metadata, as a revision
UNSTORABLE = {
    "integer beyond 64 bits": with_raw(
        document_line("d0550", {"n": "@"}), "@", b"18446744073709551616"
    ),
    "integer below 64 bits": with_raw(
        document_line("d0550", {"n": "@"}), "@", b"-9223372036854775809"
    ),
    "NaN": with_raw(document_line("d0550", {"n": "@"}), "@", b"NaN"),
    "an overflowing float": with_raw(document_line("d0550", {"n": "@"}), "@", b"1e999"),
    "a lone surrogate": document_line("d0550", {"s": "\ud800"}),
    "a NUL in a field name": document_line("d0550", {"a\x00b": 1}),
    "metadata beyond 64 bits": with_raw(
        document_line("d0550", metadata={"m": "@"}), "@", b"9223372036854775808"
    ),
    "a revision beyond 64 bits": document_line("d0550", revision=2**63),
    "a time before year 1 in UTC": document_line("d0550", created_at="0001-01-01T00:00:00+01:00"),
}


@pytest.mark.parametrize("value", list(UNSTORABLE))
async def test_a_value_the_stores_cannot_hold_is_refused_before_anything_is_written(
    tenant: Tenant, value: str
) -> None:
    """600 documents, the 551st holding the value: the review got INTERNAL with 500 written,
    and the namespace, claimed by that file, could never take a restore again."""
    lines = [document_line(f"d{i:04d}", {"i": i}) for i in range(600)]
    bad = lines.copy()
    bad[550] = UNSTORABLE[value]
    target = (await tenant.namespace()).namespace_id
    error = await rpc_error(import_namespace(tenant, target, file_of_lines(bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "nothing was written" in (error.details() or "")
    assert await Docs(tenant, target).list_ids() == []
    # nothing was claimed either: a good file restores into the namespace
    restored = await import_namespace(tenant, target, file_of_lines(lines))
    assert restored.restored.documents == 600


def biggest_body(kind: str) -> dict[str, Any]:
    """A body the API just accepts that is worst for a backup line: in bytes (control
    characters, six bytes each in JSON), in values (empty lists, four bytes each in the
    API's measure) or in number text (doubles of 17 digits)."""
    room = MAX_DOCUMENT_BYTES - 64
    if kind == "escapes":
        return {"s": "\x01" * (room - 16)}
    if kind == "values":
        return {"xs": [[] for _ in range(room // 4 - 8)]}
    return {"fs": [0.1 + i * 1e-12 for i in range(room // 11 - 8)]}


async def test_the_largest_items_the_api_accepts_restore(tenant: Tenant) -> None:
    """The line limits are derived from the API's limits: a document or a point the API
    accepts, at its most expensive for a line, is exported and restored as it was."""
    source = (await tenant.namespace()).namespace_id
    docs = Docs(tenant, source)
    for kind in ("escapes", "values", "floats"):
        await docs.create(doc(kind, body=biggest_body(kind)))
    too_big = await docs.error(docs.create(doc("over", body={"s": "\x01" * MAX_DOCUMENT_BYTES})))
    assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT
    vectors = Vectors(tenant, source)
    await vectors.create(dimension=4096)
    # 64 keys of 100 strings of 35 control characters: just under 256 KiB as a Struct
    payload = {f"k{k:02d}": ["\x02" * 35] * 100 for k in range(64)}
    await vectors.upsert(point("p1", [0.1 + i * 1e-9 for i in range(4096)], **payload))
    data, _ = await export_namespace(tenant, source)
    _, items = file_items(data)
    assert max(len(json.dumps(i, ensure_ascii=False)) for i in items) > 1024 * KIB

    target = (await tenant.namespace()).namespace_id
    restored = await import_namespace(tenant, target, data)
    assert (restored.restored.documents, restored.restored.points) == (3, 1)
    again, _ = await export_namespace(tenant, target)
    assert comparable(file_items(again)[1]) == comparable(items)
    got = await docs.stub.GetDocument(
        doc_pb.GetDocumentRequest(document_id="values"), metadata=Docs(tenant, target).md
    )
    assert got.document.ByteSize() <= MAX_DOCUMENT_BYTES
    assert MAX_PAYLOAD_BYTES == MAX_DOCUMENT_BYTES
