"""Documents of one namespace, in MongoDB, only through a ScopedCollection.

Documents are addressed by `document_id`, unique per namespace (a compound
unique index on namespace_id + document_id): the same id in two namespaces is
two documents, and creating one never reveals that the other exists. What a
document may hold is checked by storage/data/document_checks.py, for the API and
a restore alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope, ScopedCollection
from storage.core.clock import utc_now
from storage.core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Reason,
)
from storage.core.filters import Group, to_mongo
from storage.core.ids import CLIENT_ID_RE, random_base62
from storage.core.pages import decode_page_token, page_of
from storage.data.document_checks import (
    INT64_MAX,
    INT64_MIN,
    MAX_DOCUMENT_BYTES,
    MAX_LIST_VALUES,
    MAX_METADATA_KEYS,
    MAX_METADATA_STRING,
    MAX_PAYLOAD_BYTES,
    MAX_VALUES,
    check_body,
    check_document,
    check_document_id,
    check_metadata,
    check_number,
)

# the checks live in storage/data/document_checks.py; they are a document's, named here too
__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DOCUMENT_BYTES",
    "MAX_LIST_VALUES",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_STRING",
    "MAX_PAYLOAD_BYTES",
    "MAX_VALUES",
    "DocumentRecord",
    "DocumentStore",
    "check_body",
    "check_document",
    "check_document_id",
    "check_metadata",
    "check_number",
    "new_document_id",
]

_UPDATE_RETRIES = 5


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    document_id: str
    body: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    revision: int


def _record(doc: Mapping[str, Any]) -> DocumentRecord:
    return DocumentRecord(
        document_id=doc["document_id"],
        body=doc.get("body") or {},
        metadata=doc.get("metadata") or {},
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        revision=int(doc["revision"]),
    )


def new_document_id() -> str:
    return "doc_" + random_base62(20)


class DocumentStore:
    """Hands out the documents of one scope; every call goes through ScopedCollection."""

    COLLECTION = "documents"

    def __init__(self, *, mongo: MongoStore, now: Callable[[], datetime] = utc_now) -> None:
        self._mongo = mongo
        self._now = now

    def _collection(self, scope: Scope) -> ScopedCollection:
        return self._mongo.scoped(self.COLLECTION, scope)

    def _new(
        self, document_id: str | None, body: dict[str, Any], metadata: dict[str, Any]
    ) -> dict[str, Any]:
        now = self._now()
        return {
            "document_id": check_document_id(document_id) if document_id else new_document_id(),
            "body": body,
            "metadata": metadata,
            "created_at": now,
            "updated_at": now,
            "revision": 1,
        }

    async def create(
        self,
        scope: Scope,
        *,
        document_id: str | None,
        body: dict[str, Any],
        metadata: dict[str, Any],
    ) -> DocumentRecord:
        doc = self._new(document_id, body, metadata)
        try:
            await self._collection(scope).insert_one(doc)
        except DuplicateKeyError:
            raise AlreadyExistsError(f"document {doc['document_id']!r} already exists") from None
        return _record(doc)

    async def create_many(
        self, scope: Scope, items: list[tuple[str | None, dict[str, Any], dict[str, Any]]]
    ) -> list[DocumentRecord]:
        """All or nothing for duplicates: ids are checked before anything is written."""
        batch = random_base62(16)
        docs = [{**self._new(i, b, m), "batch": batch} for i, b, m in items]
        ids = [d["document_id"] for d in docs]
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError(
                "the batch names the same document_id twice", field="requests"
            )
        collection = self._collection(scope)
        taken = await collection.find({"document_id": {"$in": ids}})
        if taken:
            raise AlreadyExistsError(f"document {taken[0]['document_id']!r} already exists")
        try:
            await collection.insert_many(docs)
        except (DuplicateKeyError, BulkWriteError):  # lost a race with a concurrent writer
            await collection.delete_many({"batch": batch})  # ours only, never the other writer's
            raise AlreadyExistsError(
                "a document of the batch was created concurrently; retry"
            ) from None
        return [_record(d) for d in docs]

    async def ingest(
        self,
        scope: Scope,
        *,
        writer: str,
        document_id: str,
        body: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        """Create or replace one document, at most once per `writer` (an ingestion task).

        The document is stamped with `writer`; replaying the same write (a task
        re-claimed after its worker died) finds the stamp and changes nothing, so
        the write happens once in effect and `revision` counts real writes.
        Concurrent writers are ordered by a compare-and-set on `revision`. Every
        filter names exactly the fields of an index (document_id; document_id and
        revision), which the embedded engine needs to avoid scanning the namespace
        (docs/embedded-mongodb.md); a `{ingested_by: {$ne: writer}}` upsert did not.
        """
        collection = self._collection(scope)
        check_document_id(document_id)
        for _ in range(_UPDATE_RETRIES):
            now = self._now()
            current = await collection.find_one(
                {"document_id": document_id}, projection={"ingested_by": 1, "revision": 1}
            )
            if current is None:
                try:
                    await collection.insert_one(
                        {
                            "document_id": document_id,
                            "body": body,
                            "metadata": metadata,
                            "created_at": now,
                            "updated_at": now,
                            "revision": 1,
                            "ingested_by": writer,
                        }
                    )
                    return
                except DuplicateKeyError:
                    continue  # another writer created it meanwhile: look again
            if current.get("ingested_by") == writer:
                return
            matched = await collection.update_one(
                {"document_id": document_id, "revision": current["revision"]},
                {
                    "$set": {
                        "body": body,
                        "metadata": metadata,
                        "updated_at": now,
                        "ingested_by": writer,
                    },
                    "$inc": {"revision": 1},
                },
            )
            if matched:
                return
        raise FailedPreconditionError(
            f"document {document_id!r} is being written concurrently",
            reason=Reason.CONCURRENT_CHANGE,
        )

    async def get(self, scope: Scope, document_id: str) -> DocumentRecord:
        doc = await self._collection(scope).find_one(
            {"document_id": check_document_id(document_id)}
        )
        if doc is None:
            raise NotFoundError("document not found")
        return _record(doc)

    async def list_page(
        self, scope: Scope, *, tree: Group | None, page_size: int, page_token: str
    ) -> tuple[list[DocumentRecord], str]:
        after = decode_page_token(page_token, kind="doc", id_pattern=CLIENT_ID_RE)
        query = to_mongo(tree)
        if after is not None:
            query = (
                {"$and": [query, {"document_id": {"$gt": after}}]}
                if query
                else {"document_id": {"$gt": after}}
            )
        docs = await self._collection(scope).find(
            query, sort=[("document_id", 1)], limit=page_size + 1
        )
        return page_of(docs, page_size=page_size, kind="doc", key="document_id", build=_record)

    async def update(
        self,
        scope: Scope,
        document_id: str,
        change: Callable[[DocumentRecord], tuple[dict[str, Any], dict[str, Any]]],
    ) -> DocumentRecord:
        """Read, change, write if nobody wrote in between (optimistic, by revision)."""
        collection = self._collection(scope)
        for _ in range(_UPDATE_RETRIES):
            current = await self.get(scope, document_id)
            body, metadata = change(current)
            now = self._now()
            matched = await collection.update_one(
                {"document_id": document_id, "revision": current.revision},
                {
                    "$set": {
                        "body": body,
                        "metadata": metadata,
                        "updated_at": now,
                        "revision": current.revision + 1,
                    }
                },
            )
            if matched:
                return replace(
                    current,
                    body=body,
                    metadata=metadata,
                    updated_at=now,
                    revision=current.revision + 1,
                )
        raise FailedPreconditionError(
            "the document is being changed concurrently; retry", reason=Reason.CONCURRENT_CHANGE
        )

    async def delete(self, scope: Scope, document_id: str) -> None:
        if not await self._collection(scope).delete_one(
            {"document_id": check_document_id(document_id)}
        ):
            raise NotFoundError("document not found")

    async def count(self, scope: Scope) -> int:
        return await self._collection(scope).count_documents({})
