"""Namespace backup and restore: a namespace's data out as one file, and into another.

Export reads documents (by document_id), the vector store's configuration,
its points with vectors and payloads (in Qdrant's id order) and the webhooks
without their secrets, and encodes them as a backup file
(storage/core/backup_format.py), with progress in between. It is not a
snapshot: what is written meanwhile may or may not be in the file. It is
bounded in time: a whole export by the export deadline, and a client that
takes nothing for the idle time is cut off, so a stalled reader never holds
a database cursor for long (storage/data/backup_limits.py).

Restore (storage/data/backup_restore.py) checks the whole file before it
writes anything, then writes it idempotently, so that a retry completes an
interrupted restore. Restored webhooks get new secrets (the file holds none),
returned once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.core.backup_format import BackupEncoder
from storage.core.clock import utc_now
from storage.core.errors import DeadlineExceededError
from storage.data.backup_limits import BackupLimits
from storage.data.backup_restore import (
    RESTORE_MARKERS,
    BackupCounts,
    Restorer,
    RestoreResult,
)
from storage.data.documents import DocumentStore
from storage.data.vectors import VectorConfig, VectorStore
from storage.tenancy.namespaces import Namespace
from storage.webhooks.store import WebhookStore

__all__ = [
    "BackupCounts",
    "BackupLimits",
    "ExportProgress",
    "NamespaceBackup",
    "RestoreResult",
]

# local-mode Qdrant scans the collection for every scroll page: big pages, few scans
_POINT_PAGE = 1000
_FLUSH_BYTES = 64 * 1024
_PROGRESS_EVERY = 1000
# encoding is CPU work: other calls get the event loop this often
_YIELD_EVERY = 200


@dataclass(frozen=True, slots=True)
class ExportProgress:
    done: BackupCounts
    total: BackupCounts


class NamespaceBackup:
    MARKERS = RESTORE_MARKERS

    def __init__(
        self,
        *,
        mongo: MongoStore,
        documents: DocumentStore,
        vectors: VectorStore,
        webhooks: WebhookStore,
        vet_url: Callable[[str], Awaitable[None]],
        meshgate_version: str,
        limits: BackupLimits | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._mongo = mongo
        self._documents = documents
        self._vectors = vectors
        self._webhooks = webhooks
        self._version = meshgate_version
        self._now = now
        self.limits = limits or BackupLimits()
        self._restorer = Restorer(
            mongo=mongo,
            documents=documents,
            vectors=vectors,
            webhooks=webhooks,
            vet_url=vet_url,
            limits=self.limits,
            now=now,
        )

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

    async def export_to(
        self,
        scope: Scope,
        namespace: Namespace,
        send: Callable[[bytes | ExportProgress], Awaitable[None]],
    ) -> None:
        """The export, each piece handed to `send` (the call's write): the whole of it
        within the export deadline, each `send` within the idle time; either one past its
        bound is DEADLINE_EXCEEDED, and the cursors of the export are closed."""
        limits = self.limits
        pieces = self.export(scope, namespace)
        try:
            async with asyncio.timeout(limits.export_deadline_s):
                async for piece in pieces:
                    try:
                        async with asyncio.timeout(limits.idle_s):
                            await send(piece)
                    except TimeoutError:
                        raise DeadlineExceededError(
                            f"the client took nothing for {limits.idle_s:g} s; the export"
                            " was stopped"
                        ) from None
        except TimeoutError:
            raise DeadlineExceededError(
                f"the export took longer than the {limits.export_deadline_s:g} s this server allows"
            ) from None
        finally:
            await pieces.aclose()

    async def export(
        self, scope: Scope, namespace: Namespace
    ) -> AsyncGenerator[bytes | ExportProgress]:
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
        """The file streamed in as `chunks`, into the empty namespace of `scope`
        (storage/data/backup_restore.py)."""
        return await self._restorer.restore(scope, chunks)
