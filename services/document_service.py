"""DocumentService: JSON documents of the namespace in `x-namespace`."""

from __future__ import annotations

from typing import Any

from meshgate.v1 import document_service_pb2 as pb
from meshgate.v1 import document_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import dict_to_struct, struct_to_dict, timestamp
from storage.core.errors import InvalidArgumentError
from storage.core.filters import check_field, parse_filter
from storage.core.pages import page_size
from storage.data.documents import (
    MAX_DOCUMENT_BYTES,
    DocumentRecord,
    DocumentStore,
    check_document,
    check_document_id,
)

__all__ = ["MAX_BATCH", "MAX_DOCUMENT_BYTES", "DocumentServicer", "checked_document"]

MAX_BATCH = 100


def document_to_proto(record: DocumentRecord) -> pb.Document:
    return pb.Document(
        document_id=record.document_id,
        body=dict_to_struct(record.body),
        metadata=dict_to_struct(record.metadata),
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
        revision=record.revision,
    )


def checked_document(
    document: pb.Document, *, what: str
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """The document of a request, checked by the one document check a restore runs too
    (storage/data/documents.py). An oversized message is refused before its Structs are
    converted: the message is never smaller than what the check measures."""
    if document.ByteSize() > MAX_DOCUMENT_BYTES:
        raise InvalidArgumentError(f"{what} is larger than {MAX_DOCUMENT_BYTES // 1024} KiB")
    body = struct_to_dict(document.body)
    metadata = struct_to_dict(document.metadata)
    document_id = document.document_id or None
    check_document(document_id, body, metadata, what=what)
    return document_id, body, metadata


class DocumentServicer(pb_grpc.DocumentServiceServicer):
    def __init__(self, *, documents: DocumentStore) -> None:
        self._documents = documents

    async def CreateDocument(
        self, request: pb.CreateDocumentRequest, context: Any
    ) -> pb.CreateDocumentResponse:
        scope = current_call.get().require_scope()
        document_id, body, metadata = checked_document(request.document, what="document")
        record = await self._documents.create(
            scope, document_id=document_id, body=body, metadata=metadata
        )
        current_call.get().resource = record.document_id
        return pb.CreateDocumentResponse(document=document_to_proto(record))

    async def BatchCreateDocuments(
        self, request: pb.BatchCreateDocumentsRequest, context: Any
    ) -> pb.BatchCreateDocumentsResponse:
        scope = current_call.get().require_scope()
        if not 1 <= len(request.requests) <= MAX_BATCH:
            raise InvalidArgumentError(
                f"requests must hold 1-{MAX_BATCH} documents", field="requests"
            )
        items = [
            checked_document(r.document, what=f"requests[{i}].document")
            for i, r in enumerate(request.requests)
        ]
        records = await self._documents.create_many(scope, items)
        return pb.BatchCreateDocumentsResponse(documents=[document_to_proto(r) for r in records])

    async def GetDocument(
        self, request: pb.GetDocumentRequest, context: Any
    ) -> pb.GetDocumentResponse:
        scope = current_call.get().require_scope()
        record = await self._documents.get(scope, request.document_id)
        return pb.GetDocumentResponse(document=document_to_proto(record))

    async def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: Any
    ) -> pb.ListDocumentsResponse:
        scope = current_call.get().require_scope()
        tree = parse_filter(struct_to_dict(request.filter)) if request.HasField("filter") else None
        records, token = await self._documents.list_page(
            scope, tree=tree, page_size=page_size(request.page_size), page_token=request.page_token
        )
        return pb.ListDocumentsResponse(
            documents=[document_to_proto(r) for r in records], next_page_token=token
        )

    async def UpdateDocument(
        self, request: pb.UpdateDocumentRequest, context: Any
    ) -> pb.UpdateDocumentResponse:
        scope = current_call.get().require_scope()
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgumentError(
                "update_mask must name at least one path", field="update_mask"
            )
        _, body, metadata = checked_document(request.document, what="document")
        keys: list[str] = []
        for path in paths:
            if path in ("body", "metadata"):
                continue
            head, _, key = path.partition(".")
            if head != "metadata" or not key:
                raise InvalidArgumentError(
                    f"update_mask path {path[:80]!r} is not one of body, metadata, metadata.<key>",
                    field="update_mask",
                )
            try:
                keys.append(check_field(key))
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(
                    f"update_mask path {path[:80]!r}: {exc.message}", field="update_mask"
                ) from None

        def change(current: DocumentRecord) -> tuple[dict[str, Any], dict[str, Any]]:
            new_body = body if "body" in paths else current.body
            new_metadata = dict(metadata) if "metadata" in paths else dict(current.metadata)
            for key in keys:
                if key in metadata:
                    new_metadata[key] = metadata[key]
                else:
                    new_metadata.pop(key, None)
            # the request was within the limit, the merge with what is stored may not be
            check_document(current.document_id, new_body, new_metadata, what="the updated document")
            return new_body, new_metadata

        record = await self._documents.update(
            scope, check_document_id(request.document.document_id), change
        )
        return pb.UpdateDocumentResponse(document=document_to_proto(record))

    async def DeleteDocument(
        self, request: pb.DeleteDocumentRequest, context: Any
    ) -> pb.DeleteDocumentResponse:
        scope = current_call.get().require_scope()
        await self._documents.delete(scope, request.document_id)
        return pb.DeleteDocumentResponse()
