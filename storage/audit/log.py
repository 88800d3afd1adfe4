"""The audit trail: queued in memory, appended to a hash chain per organization in MongoDB.

Calls never wait for the audit store: the audit observer queues an event and
returns; a background writer appends queued events in order. If MongoDB is
down, events stay queued and are written when it returns. The queue is
bounded; when it is full, audited calls are refused (UNAVAILABLE) before they
do anything — an audited action is never performed without its record, and
nothing queued is dropped.

Chain: each event stores the hash of the one before it (storage/audit/chain.py);
editing, deleting or reordering any event breaks the chain at that event,
which `verify` reports.

Storage: events live in block documents (`audit_blocks`) of up to 100 events
each. The writer pushes the events queued for an organization onto its open
block with a conditional update (`last_sequence` must still be what it read,
and the block must not be sealed). When the open block is full it first seals
it, again conditionally on its `last_sequence` (a compare-and-swap on the
head), and only then opens the next block, whose `_id`
(`<organization_id>:<first sequence>`) follows from the sealed block's last
sequence. A replica working from a stale view of the head (its cached head is
behind another replica's writes) loses one of these compare-and-swaps, or the
unique `_id`, re-reads the head and chains after the winner: no two blocks
can hold the same sequence, so the chain cannot fork. Writes grow with
flushes, not with calls, and the collection holds few documents.

After each append the head is also anchored outside MongoDB
(storage/audit/anchor.py), so `verify` notices the newest events, or the
whole chain, removed, and a chain rewritten with recomputed hashes; and the
head this writer reached is kept for the checkpoint job, which signs it
(storage/audit/checkpoints.py), so a kept checkpoint notices a rewrite of both.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from storage.audit.anchor import Anchor, AuditAnchor
from storage.audit.chain import GENESIS, ChainCheck, ChainReport, event_hash
from storage.backends.mongo import MongoStore
from storage.core.clock import utc_now
from storage.core.errors import InvalidArgumentError, UnavailableError
from storage.core.ids import random_base62
from storage.core.pages import decode_page_token, encode_page_token

__all__ = ["GENESIS", "AuditLog", "ChainReport"]

_LOG = logging.getLogger("meshgate.audit")
_SEQ_TOKEN = re.compile(r"^[0-9]{1,12}$")


_BLOCK = 100


@dataclass(frozen=True, slots=True)
class _Head:
    block: str  # the newest block's _id ("" before the first)
    sequence: int
    hash: str
    count: int
    sealed: bool = False  # the newest block takes no more events: the next one opens


class AuditLog:
    @property
    def _collection(self) -> AsyncCollection[dict[str, Any]]:
        """Taken at each call: the client behind it can be switched (MongoStore.switch)."""
        return self._mongo.database["audit_blocks"]

    def __init__(
        self,
        *,
        mongo: MongoStore,
        anchor: AuditAnchor | None = None,
        max_queue: int = 100_000,
        now: Callable[[], datetime] = utc_now,
        retry_s: float = 1.0,
        gather_s: float = 0.2,
    ) -> None:
        self._mongo = mongo
        self._anchor = anchor
        self._gather_s = gather_s
        self._queue: deque[dict[str, Any]] = deque()
        self._max = max_queue
        self._now = now
        self._retry_s = retry_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        # the head this process last wrote per organization; re-read on conflict or error
        self._heads: dict[str, _Head] = {}
        # the newest head this process wrote per organization since `take_written_heads`,
        # kept only while a checkpoint job takes them (storage/audit/checkpoints.py)
        self.keeps_written_heads = False
        self._written: dict[str, Anchor] = {}
        self.written = 0
        self.failures = 0

    async def ensure_indexes(self) -> None:
        await self._collection.create_index(
            [("organization_id", ASCENDING), ("first_sequence", DESCENDING)]
        )

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def saturated(self) -> bool:
        return len(self._queue) >= self._max

    def check_room(self) -> None:
        """Refuse an audited call up front when its event could not be queued."""
        if self.saturated:
            raise UnavailableError("the audit trail is unavailable; audited calls are refused")

    def record(self, **fields: Any) -> None:
        """Queue one event (never blocks, never drops: `check_room` guards audited calls)."""
        self._queue.append({**fields, "time": self._now(), "event_id": "aud_" + random_base62(20)})
        self._wake.set()

    async def run(self) -> None:
        """The writer: forever, in order; a failed write is retried, its events stay queued."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._gather_s)  # one write carries what a busy moment queued
            try:
                await self.flush()
            except PyMongoError as exc:
                self.failures += 1
                _LOG.warning(
                    "audit store unavailable (%s); %d events queued", type(exc).__name__, self.depth
                )
                await asyncio.sleep(self._retry_s)

    async def flush(self) -> None:
        """Write queued events in order, one writer at a time (the loop, or a reader).

        Each organization's queued events go in order, in blocks of up to `_BLOCK`;
        what was written leaves the queue once per round, what was queued meanwhile
        waits for the next round.
        """
        async with self._lock:
            while self._queue:
                by_organization: dict[str, list[dict[str, Any]]] = {}
                for event in self._queue:
                    by_organization.setdefault(event["organization_id"], []).append(event)
                done: set[int] = set()
                try:
                    for organization_id, events in by_organization.items():
                        for start in range(0, len(events), _BLOCK):
                            block = events[start : start + _BLOCK]
                            await self._append(organization_id, block)
                            done.update(map(id, block))
                            self.written += len(block)
                finally:
                    self._queue = deque(e for e in self._queue if id(e) not in done)

    async def _head(self, organization_id: str) -> _Head:
        last = await self._collection.find_one(
            {"organization_id": organization_id},
            {"events": 0},
            sort=[("first_sequence", DESCENDING)],
        )
        if last is None:
            return _Head("", 0, GENESIS, 0)
        return _Head(
            last["_id"],
            int(last["last_sequence"]),
            last["last_hash"],
            int(last["count"]),
            bool(last.get("sealed")),
        )

    async def _already_written(self, organization_id: str, batch: list[dict[str, Any]]) -> set[str]:
        """After a lost answer (or a restart): which of these events landed anyway?"""
        ids = [e["event_id"] for e in batch]
        cursor = self._collection.find(
            {"organization_id": organization_id, "events.event_id": {"$in": ids}},
            {"events.event_id": 1},
        )
        landed = {e["event_id"] async for doc in cursor for e in doc["events"]}
        return landed.intersection(ids)

    async def _append(self, organization_id: str, batch: list[dict[str, Any]]) -> None:
        for _ in range(50):
            head = self._heads.get(organization_id)
            if head is None:
                landed = await self._already_written(organization_id, batch)
                if landed:
                    batch = [e for e in batch if e["event_id"] not in landed]
                    if not batch:
                        self._heads.pop(organization_id, None)
                        return
                head = await self._head(organization_id)
            previous = head.hash
            events = []
            for offset, event in enumerate(batch, start=1):
                chained = {**event, "sequence": head.sequence + offset, "previous_hash": previous}
                chained["hash"] = previous = event_hash(chained)
                events.append(chained)
            last = events[-1]
            self._heads.pop(organization_id, None)  # re-read unless this write is confirmed
            if head.block and not head.sealed and head.count + len(events) <= _BLOCK:
                result = await self._collection.update_one(
                    {"_id": head.block, "last_sequence": head.sequence, "sealed": {"$ne": True}},
                    {
                        "$push": {"events": {"$each": events}},
                        "$set": {"last_sequence": last["sequence"], "last_hash": last["hash"]},
                        "$inc": {"count": len(events)},
                    },
                )
                if result.modified_count != 1:
                    continue  # another replica appended first: chain after it
                block = head.block
            else:
                if head.block and not head.sealed:
                    # close the head block where this writer believes it ends; a writer
                    # whose view is stale fails here and chains after the real head
                    sealed = await self._collection.update_one(
                        {
                            "_id": head.block,
                            "last_sequence": head.sequence,
                            "sealed": {"$ne": True},
                        },
                        {"$set": {"sealed": True}},
                    )
                    if sealed.modified_count != 1:
                        continue
                block = f"{organization_id}:{head.sequence + 1:012d}"
                try:
                    await self._collection.insert_one(
                        {
                            "_id": block,
                            "organization_id": organization_id,
                            "first_sequence": head.sequence + 1,
                            "last_sequence": last["sequence"],
                            "last_hash": last["hash"],
                            "count": len(events),
                            "events": events,
                        }
                    )
                except DuplicateKeyError:
                    continue
            self._heads[organization_id] = _Head(
                block,
                last["sequence"],
                last["hash"],
                (head.count if block == head.block else 0) + len(events),
            )
            written = self._written.get(organization_id)
            if self.keeps_written_heads and (
                written is None or written.sequence < last["sequence"]
            ):
                self._written[organization_id] = Anchor(last["sequence"], last["hash"])
            if self._anchor is not None:
                await self._anchor.advance(
                    organization_id, sequence=last["sequence"], hash=last["hash"]
                )
            return
        raise UnavailableError("audit chain contention: could not append")

    async def _events(
        self, organization_id: str, *, newest_first: bool
    ) -> AsyncIterator[dict[str, Any]]:
        order = DESCENDING if newest_first else ASCENDING
        cursor = self._collection.find({"organization_id": organization_id}).sort(
            "first_sequence", order
        )
        async for block in cursor:
            events = block.get("events") or []
            for event in reversed(events) if newest_first else events:
                yield event

    async def list_page(
        self,
        *,
        organization_id: str,
        environment: str,
        only_namespaces: frozenset[str],
        filters: dict[str, Any],
        start: datetime | None,
        end: datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[dict[str, Any]], str]:
        """Newest first. Filters are matched while walking the organization's blocks, so
        every page is full.

        Only events of `environment` are listed (events recorded before events carried
        an environment have none and are never listed), and with `only_namespaces`
        only events in those namespaces.
        """
        wanted: dict[str, str] = {}
        for name in ("actor_key_id", "resource", "namespace_id", "outcome"):
            value = filters.get(name)
            if value:
                if not isinstance(value, str) or len(value) > 200:
                    raise InvalidArgumentError(f"{name} must be at most 200 characters", field=name)
                wanted[name] = value
        action = filters.get("action") or ""
        if action and (len(action) > 200 or not re.fullmatch(r"[A-Za-z0-9_./]+", action)):
            raise InvalidArgumentError("action must be a method name", field="action")
        after = decode_page_token(page_token, kind="audit", id_pattern=_SEQ_TOKEN)
        below = int(after) if after is not None else None
        items: list[dict[str, Any]] = []
        more = False
        async for event in self._events(organization_id, newest_first=True):
            if below is not None and event["sequence"] >= below:
                continue
            if event.get("environment") != environment:
                continue
            if only_namespaces and event.get("namespace_id") not in only_namespaces:
                continue
            if any(event.get(k) != v for k, v in wanted.items()):
                continue
            method = event.get("method", "")
            if action and method != action and not method.endswith("/" + action):
                continue
            if (start and event["time"] < start) or (end and event["time"] >= end):
                continue
            if len(items) == page_size:
                more = True
                break
            items.append(event)
        token = encode_page_token(kind="audit", after=str(items[-1]["sequence"])) if more else ""
        return items, token

    def take_written_heads(self) -> dict[str, Anchor]:
        """The newest head this process wrote per organization since the last call: what
        the checkpoint job signs (the chain as this writer chained it, not as read back)."""
        written, self._written = self._written, {}
        return written

    async def verify(self, organization_id: str, *, kept: Anchor | None = None) -> ChainReport:
        """Recompute the chain from its first event and compare its end with the anchor,
        and with `kept` (a checkpoint the caller kept: the chain must hold its hash there).

        The anchor is read before the chain, so events other replicas write meanwhile
        only lengthen the chain past it.
        """
        anchor = await self._anchor.read(organization_id) if self._anchor is not None else None
        check = ChainCheck(anchor, kept)
        async for event in self._events(organization_id, newest_first=False):
            check.add(event)
        return check.report()
