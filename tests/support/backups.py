"""Namespace backups through the API: export to bytes, import from bytes, and the items of a
file read back (for comparing two files)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from meshgate.v1 import namespace_service_pb2 as pb

from server.backends import Backends
from storage.backends.scoped import Scope
from storage.core.backup_format import FORMAT, FORMAT_VERSION, ITEM_KINDS, BackupDecoder
from storage.data.documents import DocumentStore
from storage.data.vectors import VectorStore
from tests.support.clients import auth
from tests.support.log_guard import NEVER_LOGGED
from tests.support.tenants import Tenant

__all__ = [
    "DIMENSION",
    "MANIFEST",
    "bomb",
    "comparable",
    "document_line",
    "export_namespace",
    "file_items",
    "file_of_lines",
    "fill",
    "import_namespace",
    "import_stream",
]

DIMENSION = 8
MANIFEST = {
    "kind": "manifest",
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "meshgate_version": "0.1.0",
    "exported_at": "2026-01-01T00:00:00+00:00",
    "namespace": {"namespace_id": "ns_x", "name": "x"},
    "counts": {},
}
_GZIP = 16 + zlib.MAX_WBITS


def document_line(document_id: str, body: Any = None, **fields: Any) -> bytes:
    """One document line as any writer may spell it: NaN and Infinity as Python writes
    them, lone surrogates escaped (`fields` replace or add fields)."""
    record = {
        "kind": "document",
        "document_id": document_id,
        "body": {} if body is None else body,
        "metadata": {},
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "revision": 1,
        **fields,
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def file_of_lines(lines: Iterable[bytes]) -> bytes:
    """An intact backup file (manifest, counts, checksum) of these item lines, whatever
    they hold: what an attacker, or a buggy writer, can always produce."""
    head = json.dumps(MANIFEST).encode() + b"\n"
    digest = hashlib.sha256(head)
    counts = dict.fromkeys(ITEM_KINDS, 0)
    body = [head]
    for line in lines:
        digest.update(line)
        counts[json.loads(line)["kind"]] += 1
        body.append(line)
    end = {"kind": "end", "counts": counts, "sha256": digest.hexdigest()}
    body.append(json.dumps(end).encode() + b"\n")
    return gzip.compress(b"".join(body))


def bomb(*, lines: int = 4, line_bytes: int = 15 * 1024 * 1024) -> bytes:
    """The restore bomb of issue 21: documents whose bodies are ~15 MiB of `[{},{},...]`,
    about 60 KB compressed, ending with a wrong checksum (it never had to be valid)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, _GZIP)
    out = [compressor.compress(json.dumps(MANIFEST).encode() + b"\n")]
    piece = b"{}," * 100_000
    for i in range(lines):
        head, _, tail = document_line(f"bomb{i}").partition(b'"body":{}')
        out.append(compressor.compress(head + b'"body":{"x":['))
        out.extend(compressor.compress(piece) for _ in range(line_bytes // len(piece)))
        out.append(compressor.compress(b"{}]}" + tail))
    out.append(compressor.compress(b'{"kind":"end","counts":{},"sha256":"0"}\n'))
    return b"".join(out) + compressor.flush()


async def import_stream(
    tenant: Tenant,
    namespace: str,
    chunks: AsyncIterable[bytes],
    *,
    stub: Any = None,
) -> pb.ImportNamespaceResponse:
    """ImportNamespace of whatever `chunks` yields, one message each (to the session server,
    or through `stub`)."""

    async def requests() -> AsyncIterator[pb.ImportNamespaceRequest]:
        async for chunk in chunks:
            yield pb.ImportNamespaceRequest(data=chunk)

    response: pb.ImportNamespaceResponse = await (stub or tenant.namespaces).ImportNamespace(
        requests(), metadata=auth(tenant.admin, namespace)
    )
    return response


def pieces(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def export_namespace(
    tenant: Tenant, namespace: str, secret: str | None = None
) -> tuple[bytes, list[pb.ExportProgress]]:
    """The file's bytes and the progress messages that came with them."""
    data = bytearray()
    progress: list[pb.ExportProgress] = []
    call = tenant.namespaces.ExportNamespace(
        pb.ExportNamespaceRequest(), metadata=auth(secret or tenant.admin, namespace)
    )
    async for message in call:
        if message.HasField("progress"):
            progress.append(message.progress)
        else:
            data += message.data
    return bytes(data), progress


async def import_namespace(
    tenant: Tenant, namespace: str, data: bytes, *, chunk: int = 256 * 1024
) -> pb.ImportNamespaceResponse:
    async def requests() -> AsyncIterator[pb.ImportNamespaceRequest]:
        for start in range(0, len(data), chunk):
            yield pb.ImportNamespaceRequest(data=data[start : start + chunk])

    response: pb.ImportNamespaceResponse = await tenant.namespaces.ImportNamespace(
        requests(), metadata=auth(tenant.admin, namespace)
    )
    for webhook in response.webhooks:
        NEVER_LOGGED.add(webhook.secret)
    return response


def file_items(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and the items of an intact file."""
    decoder = BackupDecoder()
    items = list(decoder.feed(data))
    return decoder.finish(), items


async def fill(backends: Backends, scope: Scope, *, documents: int, points: int) -> None:
    """Data written through the real stores (the API would spend minutes of rate limit)."""
    store = DocumentStore(mongo=backends.mongo)
    for start in range(0, documents, 1000):
        await store.create_many(
            scope,
            [
                (f"doc-{i:05d}", {"text": f"body {i}", "n": i}, {"group": i % 7, "tag": "t"})
                for i in range(start, min(start + 1000, documents))
            ],
        )
    vectors = VectorStore(mongo=backends.mongo, qdrant=backends.qdrant, payload_index=False)
    for start in range(0, points, 1000):
        await vectors.upsert(
            scope,
            [
                (
                    f"p-{i:05d}",
                    [float((i * k) % 13) / 13 for k in range(1, DIMENSION + 1)],
                    {"group": i % 5},
                )
                for i in range(start, min(start + 1000, points))
            ],
        )


def comparable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points sorted by id (Qdrant's order depends on the namespace), vectors as sets of
    about-equal values (a cosine store keeps them normalized, to the last bit or so)."""
    out = [i for i in items if i["kind"] != "point"]
    points = sorted((i for i in items if i["kind"] == "point"), key=lambda i: i["point_id"])
    return out + [{**p, "vector": [Close(v) for v in p["vector"]]} for p in points]


class Close:
    def __init__(self, value: float) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Close) and math.isclose(self.value, other.value, abs_tol=1e-6)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"~{self.value}"
