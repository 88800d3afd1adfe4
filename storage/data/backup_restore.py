"""Restore: a backup file streamed in, checked whole, then written into an empty namespace.

Restore never trusts a scope from the file: items carry no namespace_id or
internal_id that is read; every write goes through the target's Scope, which
stamps both. It goes in two passes over the file, which the caller streams
in once:

1. the bytes are spooled to an unnamed file in the spool directory (gone with
   the call, or the process) while every record is decoded and checked; a file
   that is damaged, truncated, of another format version, over a limit, or
   holds one invalid item is refused before anything is written;
2. the namespace is claimed for this file (a marker keyed by the file's
   checksum: an empty namespace, or one a restore of the same file was
   interrupted in), then the spool is read again and written in batches, each
   write idempotent by the item's own id (document_id, point id, webhook_id):
   a retried restore skips or overwrites what the interrupted one wrote and
   ends in the same state.

Decoding and checking is CPU work on bytes from outside, done in steps: a step
decodes and checks records for at most 10 ms (and finishes the line it is on:
a line is parsed whole, which the line limits of storage/core/backup_format.py
keep to tens of milliseconds), then the event loop serves other calls, and the
deadline can act. The same work in a thread of its own kept the loop no freer
(docs/decisions.md): the thread shares the interpreter lock with the loop, and
a busy thread preempted while holding it makes the loop wait as long. The
spool is read and written in a thread, as file I/O; a read or write under way
when the call ends is waited for (milliseconds) before the spool closes. What
bounds one call is in storage/data/backup_limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import tempfile
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.core.backup_format import BackupDecoder, BackupFileError
from storage.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    Quota,
    Reason,
    ResourceExhaustedError,
    UnavailableError,
)
from storage.data.backup_items import BackupItems, Parsed
from storage.data.backup_limits import BackupLimits, within_idle
from storage.data.documents import DocumentStore
from storage.data.vectors import VectorConfig, VectorStore
from storage.webhooks.store import WebhookRecord, WebhookStore

__all__ = ["RESTORE_MARKERS", "BackupCounts", "RestoreResult", "Restorer"]

RESTORE_MARKERS = "restores"
_DOCUMENT_BATCH = 500
_POINT_BATCH = 256
# a batch is written once it holds this much by the API's measure, whatever its count: a
# batch of the largest documents costs tens of MiB of objects, not hundreds
_BATCH_BYTES = 2 * 1024 * 1024
_SPOOL_CHUNK = 256 * 1024
# how long a client is told to wait when every import slot of this server is taken
_BUSY_RETRY_S = 5.0
# the longest a step of decoding and checking holds the event loop, but for its last line
_STEP_S = 0.01


@dataclass(frozen=True, slots=True)
class BackupCounts:
    documents: int = 0
    points: int = 0
    webhooks: int = 0


@dataclass(frozen=True, slots=True)
class RestoreResult:
    restored: BackupCounts
    # (webhook, its new secret)
    webhooks: tuple[tuple[WebhookRecord, str], ...]


class _Reading:
    """One pass over a file, in steps of at most _STEP_S (and one line)."""

    def __init__(self, items: BackupItems) -> None:
        self.items = items
        self._records: Iterator[dict[str, Any]] = iter(())

    def start(self, chunk: bytes) -> None:
        self._records = self.items.decoder.feed(chunk)

    def step(self) -> list[Parsed] | None:
        """The next items of the current chunk, checked; None when the chunk is read."""
        parsed: list[Parsed] = []
        until = time.monotonic() + _STEP_S
        for record in self._records:
            parsed.append(self.items.parse(record))
            if time.monotonic() >= until:
                break
        return parsed or None


class Restorer:
    def __init__(
        self,
        *,
        mongo: MongoStore,
        documents: DocumentStore,
        vectors: VectorStore,
        webhooks: WebhookStore,
        vet_url: Callable[[str], Awaitable[None]],
        limits: BackupLimits,
        now: Callable[[], datetime],
    ) -> None:
        self._mongo = mongo
        self._documents = documents
        self._vectors = vectors
        self._webhooks = webhooks
        self._vet_url = vet_url
        self._limits = limits
        self._now = now
        self._slots = asyncio.Semaphore(limits.import_concurrency)
        # the spool's I/O, one thread per import slot: a slow disk never delays DNS lookups
        # or other to_thread work
        self._threads = ThreadPoolExecutor(
            max_workers=limits.import_concurrency, thread_name_prefix="meshgate-spool"
        )

    async def restore(self, scope: Scope, chunks: AsyncIterable[bytes]) -> RestoreResult:
        """Checks, claims and writes; returns what `_write` wrote. The whole call is bounded
        by the import deadline; a slot of this server is held throughout."""
        if self._slots.locked():
            raise ResourceExhaustedError(
                f"this server is running {self._limits.import_concurrency} imports already;"
                " retry later",
                retry_after_s=_BUSY_RETRY_S,
                reason=Reason.SERVER_BUSY,
                quota=Quota(
                    subject="imports:server",
                    description="namespace imports one server runs at once"
                    " (MESHGATE_IMPORT_CONCURRENCY)",
                ),
            )
        async with self._slots:
            try:
                async with asyncio.timeout(self._limits.import_deadline_s):
                    return await self._restore(scope, chunks)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"the import took longer than the {self._limits.import_deadline_s:g} s this"
                    " server allows; what was written stays: the same file again completes it"
                ) from None

    async def _restore(self, scope: Scope, chunks: AsyncIterable[bytes]) -> RestoreResult:
        directory = None if self._limits.spool_dir is None else str(self._limits.spool_dir)
        with tempfile.TemporaryFile(prefix="meshgate-restore-", dir=directory) as spool:
            checksum = await self._check(chunks, spool)
            await self._claim(scope, checksum)
            spool.seek(0)
            result = await self._write(scope, spool)
            await self._mongo.scoped(RESTORE_MARKERS, scope).update_one(
                {"sha256": checksum}, {"$set": {"state": "done", "finished_at": self._now()}}
            )
            return result

    async def _spool_io[T](self, work: Callable[[], T]) -> T:
        future = asyncio.get_running_loop().run_in_executor(self._threads, work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # one read or write of at most 1 MiB: let it end before the spool is closed
            with contextlib.suppress(BaseException):
                await asyncio.wait([future])
            raise

    async def _check(self, chunks: AsyncIterable[bytes], spool: IO[bytes]) -> str:
        """Pass 1: the whole file is received, spooled and checked; the checksum it
        declares. Any refusal here says that nothing was written."""
        limits = self._limits
        decoder = BackupDecoder(
            max_inflated_bytes=limits.import_max_inflated_bytes,
            max_items=limits.import_max_items,
        )
        reading = _Reading(BackupItems(decoder))
        messages = received = 0
        try:
            async for chunk in within_idle(chunks, limits.idle_s):
                messages += 1
                received += len(chunk)
                limits.check_message(size=len(chunk), messages=messages, received=received)
                await self._spool_io(functools.partial(_spool, spool, chunk))
                reading.start(chunk)
                while (parsed := reading.step()) is not None:
                    for kind, item, _ in parsed:
                        if kind == "webhook":
                            await self._vet_url(item.url)
                    await asyncio.sleep(0)  # other calls run between steps
            decoder.finish()
        except BackupFileError:
            raise
        except InvalidArgumentError as refused:
            raise BackupFileError(refused.message.removeprefix("backup file: ")) from None
        return decoder.checksum

    async def _claim(self, scope: Scope, checksum: str) -> None:
        """This file may be written here: the namespace is empty, or a restore of the very
        same file began here before (and was perhaps interrupted)."""
        markers = self._mongo.scoped(RESTORE_MARKERS, scope)
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

    async def _vector_config(self, scope: Scope) -> VectorConfig | None:
        doc = await self._mongo.scoped(VectorStore.CONFIGS, scope).find_one({})
        return None if doc is None else VectorConfig(int(doc["dimension"]), str(doc["distance"]))

    async def _empty(self, scope: Scope) -> bool:
        return (
            await self._documents.count(scope) == 0
            and await self._vector_config(scope) is None
            and not await self._webhooks.all(scope)
        )

    async def _write(self, scope: Scope, spool: IO[bytes]) -> RestoreResult:
        """Pass 2: the checked file again, written in idempotent batches of at most 500
        documents or 256 points, and at most 2 MiB."""
        reading = _Reading(BackupItems())
        documents = _Batch(_DOCUMENT_BATCH)
        points = _Batch(_POINT_BATCH)
        webhooks: list[tuple[WebhookRecord, str]] = []
        counts = {"document": 0, "point": 0}
        while True:
            parsed = reading.step()
            if parsed is None:
                chunk = await self._spool_io(lambda: spool.read(_SPOOL_CHUNK))
                if not chunk:
                    break
                reading.start(chunk)
                continue
            await asyncio.sleep(0)  # other calls run between steps
            for kind, item, size in parsed:
                if kind == "document":
                    if documents.add(item, size):
                        counts["document"] += await self._documents_batch(scope, documents.take())
                elif kind == "vector_store":
                    await self._vector_store(scope, item)
                elif kind == "point":
                    if points.add(item, size):
                        counts["point"] += await self._vectors.upsert(scope, points.take())
                else:
                    webhooks.append((item, await self._webhooks.restore(scope, item)))
        reading.items.decoder.finish()
        counts["document"] += await self._documents_batch(scope, documents.take())
        if points.items:
            counts["point"] += await self._vectors.upsert(scope, points.take())
        return RestoreResult(
            restored=BackupCounts(counts["document"], counts["point"], len(webhooks)),
            webhooks=tuple(webhooks),
        )

    async def _documents_batch(self, scope: Scope, batch: list[dict[str, Any]]) -> int:
        """Inserts the documents of the batch not written yet (by an interrupted restore of
        this file); returns the batch's size."""
        if not batch:
            return 0
        collection = self._mongo.scoped(DocumentStore.COLLECTION, scope)
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
                if unique:
                    await collection.insert_many(unique)
                break
            except (DuplicateKeyError, BulkWriteError):
                continue  # another restore of this file wrote some meanwhile: look again
        else:
            raise FailedPreconditionError(
                "the namespace is being restored concurrently; retry",
                reason=Reason.CONCURRENT_CHANGE,
            )
        return len(batch)

    async def _vector_store(self, scope: Scope, config: VectorConfig) -> None:
        existing = await self._vector_config(scope)
        if existing is None:
            await self._vectors.create(scope, dimension=config.dimension, distance=config.distance)
        elif existing != config:  # cannot happen for the same file; never overwrite
            raise FailedPreconditionError("the namespace's vector store differs from the backup's")


class _Batch:
    """Items waiting to be written: full at `count` items or _BATCH_BYTES."""

    def __init__(self, count: int) -> None:
        self._count = count
        self.items: list[Any] = []
        self._bytes = 0

    def add(self, item: Any, size: int) -> bool:
        """Adds the item; whether the batch is full now."""
        self.items.append(item)
        self._bytes += size
        return len(self.items) >= self._count or self._bytes >= _BATCH_BYTES

    def take(self) -> list[Any]:
        items, self.items, self._bytes = self.items, [], 0
        return items


def _spool(spool: IO[bytes], chunk: bytes) -> None:
    try:
        spool.write(chunk)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UnavailableError(
                "this server has no room to receive the file now; retry"
            ) from None
        raise
