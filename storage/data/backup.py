"""Namespace backup and restore: a namespace's data out as one file, and into another.

Export reads documents (by document_id), the vector store's configuration,
its points with vectors and payloads (in Qdrant's id order) and the webhooks
without their secrets, and encodes them as a backup file
(storage/core/backup_format.py), with progress in between. It is not a
snapshot: what is written meanwhile may or may not be in the file.

Restore never trusts a scope from the file: items carry no namespace_id or
internal_id that is read; every write goes through the target's Scope, which
stamps both. It goes in two passes over the file, which the caller streams
in once:

1. the bytes are spooled to a temporary file on disk (a 10,000-item file is
   not held in memory) while every record is decoded and checked; a file that
   is damaged, truncated, of another format version, or holds one invalid
   item is refused before anything is written;
2. the namespace is claimed for this file (a marker keyed by the file's
   checksum: an empty namespace, or one a restore of the same file was
   interrupted in), then the spool is read again and written in batches, each
   write idempotent by the item's own id (document_id, point id, webhook_id):
   a retried restore skips or overwrites what the interrupted one wrote and
   ends in the same state.

Restored webhooks get new secrets (the file holds none), returned once.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.core.backup_format import BackupEncoder
from storage.core.clock import utc_now
from storage.core.errors import FailedPreconditionError, Reason
from storage.data.backup_items import BackupItems
from storage.data.documents import DocumentStore
from storage.data.vectors import VectorConfig, VectorStore
from storage.tenancy.namespaces import Namespace
from storage.webhooks.store import WebhookRecord, WebhookStore

__all__ = ["BackupCounts", "ExportProgress", "NamespaceBackup", "RestoreResult"]

_DOCUMENT_BATCH = 500
_POINT_BATCH = 256
# local-mode Qdrant scans the collection for every scroll page: big pages, few scans
_POINT_PAGE = 1000
_FLUSH_BYTES = 64 * 1024
_PROGRESS_EVERY = 1000
_SPOOL_CHUNK = 256 * 1024
# decoding and checking is CPU work: other calls get the event loop this often
_YIELD_EVERY = 200


@dataclass(frozen=True, slots=True)
class BackupCounts:
    documents: int = 0
    points: int = 0
    webhooks: int = 0


@dataclass(frozen=True, slots=True)
class ExportProgress:
    done: BackupCounts
    total: BackupCounts


@dataclass(frozen=True, slots=True)
class RestoreResult:
    restored: BackupCounts
    # (webhook, its new secret)
    webhooks: tuple[tuple[WebhookRecord, str], ...]


class NamespaceBackup:
    MARKERS = "restores"

    def __init__(
        self,
        *,
        mongo: MongoStore,
        documents: DocumentStore,
        vectors: VectorStore,
        webhooks: WebhookStore,
        vet_url: Callable[[str], Awaitable[None]],
        meshgate_version: str,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._mongo = mongo
        self._documents = documents
        self._vectors = vectors
        self._webhooks = webhooks
        self._vet_url = vet_url
        self._version = meshgate_version
        self._now = now

    # -- export ---------------------------------------------------------------------

    async def _vector_config(self, scope: Scope) -> VectorConfig | None:
        doc = await self._mongo.scoped(VectorStore.CONFIGS, scope).find_one({})
        return None if doc is None else VectorConfig(int(doc["dimension"]), str(doc["distance"]))

    async def totals(self, scope: Scope) -> BackupCounts:
        config = await self._vector_config(scope)
        return BackupCounts(
            documents=await self._documents.count(scope),
            points=await self._vectors.count(scope) if config is not None else 0,
            webhooks=len(await self._webhooks.all(scope)),
        )

    async def export(
        self, scope: Scope, namespace: Namespace
    ) -> AsyncIterator[bytes | ExportProgress]:
        """The file's bytes in pieces of about 64 KiB, with progress after every 1,000 items
        and at the end."""
        total = await self.totals(scope)
        encoder = BackupEncoder()
        out = bytearray(
            encoder.manifest(
                meshgate_version=self._version,
                exported_at=self._now().isoformat(),
                namespace={
                    "namespace_id": namespace.namespace_id,
                    "name": namespace.name,
                    "environment": namespace.environment,
                    "created_at": namespace.created_at.isoformat(),
                },
                counts={
                    "documents": total.documents,
                    "points": total.points,
                    "webhooks": total.webhooks,
                },
            )
        )
        done = {"document": 0, "point": 0, "webhook": 0}

        def progress() -> ExportProgress:
            return ExportProgress(
                done=BackupCounts(done["document"], done["point"], done["webhook"]), total=total
            )

        async for kind, item in self._items(scope):
            out += encoder.item(kind, item)
            if kind in done:
                done[kind] += 1
                if sum(done.values()) % _PROGRESS_EVERY == 0:
                    yield progress()
            if len(out) >= _FLUSH_BYTES:
                yield bytes(out)
                out.clear()
            elif sum(done.values()) % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        out += encoder.end()
        yield bytes(out)
        yield progress()

    async def _items(self, scope: Scope) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for webhook in await self._webhooks.all(scope):
            yield (
                "webhook",
                {
                    "webhook_id": webhook.webhook_id,
                    "url": webhook.url,
                    "event_types": list(webhook.event_types),
                    "enabled": webhook.enabled,
                    "description": webhook.description,
                    "disabled_reason": webhook.disabled_reason,
                    "created_at": webhook.created_at.isoformat(),
                },
            )
        documents = self._mongo.scoped(DocumentStore.COLLECTION, scope)
        async for doc in documents.iterate(sort=[("document_id", 1)], batch_size=1000):
            yield (
                "document",
                {
                    "document_id": doc["document_id"],
                    "body": doc.get("body") or {},
                    "metadata": doc.get("metadata") or {},
                    "created_at": doc["created_at"].isoformat(),
                    "updated_at": doc["updated_at"].isoformat(),
                    "revision": int(doc["revision"]),
                },
            )
        config = await self._vector_config(scope)
        if config is None:
            return
        yield "vector_store", {"dimension": config.dimension, "distance": config.distance}
        offset: str | None = None
        while True:
            points, offset = await self._vectors.page(scope, offset=offset, limit=_POINT_PAGE)
            for point in points:
                yield (
                    "point",
                    {
                        "point_id": point.point_id,
                        "vector": point.vector,
                        "payload": point.payload,
                    },
                )
            if offset is None:
                break

    # -- restore ----------------------------------------------------------------------

    async def restore(self, scope: Scope, chunks: AsyncIterable[bytes]) -> RestoreResult:
        with tempfile.TemporaryFile(prefix="meshgate-restore-") as spool:
            checksum = await self._check(chunks, spool)
            await self._claim(scope, checksum)
            spool.seek(0)
            result = await self._write(scope, spool)
            await self._mongo.scoped(self.MARKERS, scope).update_one(
                {"sha256": checksum}, {"$set": {"state": "done", "finished_at": self._now()}}
            )
            return result

    async def _check(self, chunks: AsyncIterable[bytes], spool: IO[bytes]) -> str:
        """Pass 1: the whole file is read, spooled and checked; the checksum it declares."""
        items = BackupItems()
        seen = 0
        async for chunk in chunks:
            spool.write(chunk)
            for record in items.decoder.feed(chunk):
                kind, item = items.parse(record)
                if kind == "webhook":
                    await self._vet_url(item.url)
                seen += 1
                if seen % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a big chunk is CPU work: let other calls run
        items.decoder.finish()
        return items.decoder.checksum

    async def _claim(self, scope: Scope, checksum: str) -> None:
        """This file may be written here: the namespace is empty, or a restore of the very
        same file began here before (and was perhaps interrupted)."""
        markers = self._mongo.scoped(self.MARKERS, scope)
        marker = await markers.find_one({})
        if marker is None:
            if not await self._empty(scope):
                raise FailedPreconditionError(
                    "a backup is restored into an empty namespace; this one holds data"
                )
            try:
                await markers.insert_one(
                    {"sha256": checksum, "state": "running", "started_at": self._now()}
                )
                return
            except DuplicateKeyError:  # a concurrent restore claimed it first
                marker = await markers.find_one({})
        if marker is None or marker.get("sha256") != checksum:
            raise FailedPreconditionError(
                "this namespace holds a restore of another backup file; restore into a new"
                " namespace"
            )

    async def _empty(self, scope: Scope) -> bool:
        return (
            await self._documents.count(scope) == 0
            and await self._vector_config(scope) is None
            and not await self._webhooks.all(scope)
        )

    async def _write(self, scope: Scope, spool: IO[bytes]) -> RestoreResult:
        """Pass 2: the checked file again, written in idempotent batches."""
        items = BackupItems()
        documents: list[dict[str, Any]] = []
        points: list[tuple[str, list[float], dict[str, Any]]] = []
        webhooks: list[tuple[WebhookRecord, str]] = []
        counts = {"document": 0, "point": 0}
        seen = 0
        while chunk := spool.read(_SPOOL_CHUNK):
            for record in items.decoder.feed(chunk):
                kind, item = items.parse(record)
                seen += 1
                if seen % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if kind == "document":
                    documents.append(item)
                    if len(documents) >= _DOCUMENT_BATCH:
                        counts["document"] += await self._documents_batch(scope, documents)
                elif kind == "vector_store":
                    await self._vector_store(scope, item)
                elif kind == "point":
                    points.append(item)
                    if len(points) >= _POINT_BATCH:
                        counts["point"] += await self._vectors.upsert(scope, points)
                        points.clear()
                else:
                    webhooks.append((item, await self._webhooks.restore(scope, item)))
        counts["document"] += await self._documents_batch(scope, documents)
        if points:
            counts["point"] += await self._vectors.upsert(scope, points)
        items.decoder.finish()
        return RestoreResult(
            restored=BackupCounts(counts["document"], counts["point"], len(webhooks)),
            webhooks=tuple(webhooks),
        )

    async def _documents_batch(self, scope: Scope, batch: list[dict[str, Any]]) -> int:
        """Inserts the documents of the batch not written yet (by an interrupted restore of
        this file); empties the batch and returns its size."""
        collection = self._mongo.scoped(DocumentStore.COLLECTION, scope)
        size = len(batch)
        for _ in range(3):
            ids = [d["document_id"] for d in batch]
            present = await collection.find(
                {"document_id": {"$in": ids}}, projection={"document_id": 1}
            )
            written = {d["document_id"] for d in present}
            missing = [d for d in batch if d["document_id"] not in written]
            # the same id twice in a file: the first one wins, as a retry would have it
            unique = list({d["document_id"]: d for d in reversed(missing)}.values())
            try:
                await collection.insert_many(unique)
                break
            except (DuplicateKeyError, BulkWriteError):
                continue  # another restore of this file wrote some meanwhile: look again
        else:
            raise FailedPreconditionError(
                "the namespace is being restored concurrently; retry",
                reason=Reason.CONCURRENT_CHANGE,
            )
        batch.clear()
        return size

    async def _vector_store(self, scope: Scope, config: VectorConfig) -> None:
        existing = await self._vector_config(scope)
        if existing is None:
            await self._vectors.create(scope, dimension=config.dimension, distance=config.distance)
        elif existing != config:  # cannot happen for the same file; never overwrite
            raise FailedPreconditionError("the namespace's vector store differs from the backup's")
