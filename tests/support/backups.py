"""Namespace backups through the API: export to bytes, import from bytes, and the items of a
file read back (for comparing two files)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

from meshgate.v1 import namespace_service_pb2 as pb

from server.backends import Backends
from storage.backends.scoped import Scope
from storage.core.backup_format import BackupDecoder
from storage.data.documents import DocumentStore
from storage.data.vectors import VectorStore
from tests.support.clients import auth
from tests.support.log_guard import NEVER_LOGGED
from tests.support.tenants import Tenant

__all__ = [
    "DIMENSION",
    "comparable",
    "export_namespace",
    "file_items",
    "fill",
    "import_namespace",
]

DIMENSION = 8


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
