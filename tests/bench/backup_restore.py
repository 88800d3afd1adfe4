"""The backup figure of `make bench`: ExportNamespace and ImportNamespace throughput.

One namespace is filled through the API (BatchCreateDocuments and UpsertPoints
of 100) with N documents and N 8-dimensional points and one webhook; then it
is exported (the whole file received by the client) and the file imported
into a new empty namespace. Reported: seconds and items per second each way,
and the file's size.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from meshgate.v1 import (
    common_pb2,
    document_service_pb2,
    document_service_pb2_grpc,
    namespace_service_pb2,
    namespace_service_pb2_grpc,
    vector_service_pb2,
    vector_service_pb2_grpc,
)

__all__ = ["backup_restore", "table"]

DIMENSION = 8


def _struct(value: dict[str, Any]) -> Struct:
    out = Struct()
    out.update(value)
    return out


def backup_restore(channel: grpc.Channel, admin: str, *, items: int) -> dict[str, float]:
    auth = (("authorization", f"Bearer {admin}"),)
    namespaces = namespace_service_pb2_grpc.NamespaceServiceStub(channel)

    def new_namespace() -> str:
        return namespaces.CreateNamespace(
            namespace_service_pb2.CreateNamespaceRequest(
                name=f"backup-{secrets.token_hex(4)}",
                environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
            ),
            metadata=auth,
        ).namespace.namespace_id

    source = new_namespace()
    md = (*auth, ("x-namespace", source))
    documents = document_service_pb2_grpc.DocumentServiceStub(channel)
    vectors = vector_service_pb2_grpc.VectorServiceStub(channel)
    vectors.CreateVectorStore(
        vector_service_pb2.CreateVectorStoreRequest(
            vector_store=vector_service_pb2.VectorStore(
                dimension=DIMENSION, distance=vector_service_pb2.DISTANCE_COSINE
            )
        ),
        metadata=md,
    )
    for start in range(0, items, 100):
        ids = range(start, min(start + 100, items))
        documents.BatchCreateDocuments(
            document_service_pb2.BatchCreateDocumentsRequest(
                requests=[
                    document_service_pb2.CreateDocumentRequest(
                        document=document_service_pb2.Document(
                            document_id=f"doc-{i}",
                            body=_struct({"text": f"document {i} " * 8}),
                            metadata=_struct({"group": i % 10}),
                        )
                    )
                    for i in ids
                ]
            ),
            metadata=md,
        )
        vectors.UpsertPoints(
            vector_service_pb2.UpsertPointsRequest(
                points=[
                    vector_service_pb2.Point(
                        id=f"p-{i}",
                        vector=[((i * k) % 97) / 97 + 0.01 for k in range(1, DIMENSION + 1)],
                        payload=_struct({"group": i % 10}),
                    )
                    for i in ids
                ]
            ),
            metadata=md,
        )

    started = time.perf_counter()
    data = bytearray()
    for message in namespaces.ExportNamespace(
        namespace_service_pb2.ExportNamespaceRequest(), metadata=md
    ):
        if not message.HasField("progress"):
            data += message.data
    exported_s = time.perf_counter() - started

    target = new_namespace()

    def chunks() -> Iterator[namespace_service_pb2.ImportNamespaceRequest]:
        for at in range(0, len(data), 256 * 1024):
            yield namespace_service_pb2.ImportNamespaceRequest(
                data=bytes(data[at : at + 256 * 1024])
            )

    started = time.perf_counter()
    response = namespaces.ImportNamespace(chunks(), metadata=(*auth, ("x-namespace", target)))
    imported_s = time.perf_counter() - started
    restored = response.restored.documents + response.restored.points
    if restored != 2 * items:
        raise RuntimeError(f"the restore wrote {restored} items of {2 * items}")
    return {
        "items": float(2 * items),
        "file_bytes": float(len(data)),
        "export_s": exported_s,
        "export_items_per_s": 2 * items / exported_s,
        "import_s": imported_s,
        "import_items_per_s": 2 * items / imported_s,
    }


def table(r: dict[str, float]) -> list[str]:
    return [
        f"backup of {r['items'] / 2:.0f} documents + {r['items'] / 2:.0f} points"
        f" ({r['file_bytes'] / 1e6:.1f} MB file): export {r['export_s']:.1f} s"
        f" ({r['export_items_per_s']:.0f} items/s), import {r['import_s']:.1f} s"
        f" ({r['import_items_per_s']:.0f} items/s)",
    ]
