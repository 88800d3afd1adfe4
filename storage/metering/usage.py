"""Usage analytics and the credit ledger: counted in memory, stored once per second, exactly once.

Recording a call is a dictionary update (no I/O on the call path). Every
second `flush` turns the counters into one `usage` document per organization,
namespace, method and hour that saw calls (calls, credits, calls by status
code, rate-limit refusals), with an id made of the replica, a flush sequence
number and an index. A flush that fails is retried with the same documents
and ids, so nothing is counted twice or lost; counters recorded meanwhile go
into the next batch. Flushes run one at a time, so a writer's batches are
stored in the order of their numbers.

These documents are the credit ledger: each says which writer stored it in
which batch, and every stored batch is reported (`on_flushed`) to the credit
accounts, which then settle exactly those credits in Redis; a Redis account
that was lost is rebuilt from them (storage/metering/credits.py).

Usage is organization-level data: every query filters on organization_id;
namespace_id is a dimension ("" for calls outside any namespace), and so is the
environment of the caller's key, by which GetUsage shows each key only its own
environment. It outlives namespace deletion on purpose (billing history).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError

from storage.backends.mongo import MongoStore
from storage.metering.credits import LedgerBatch, period_of

__all__ = ["COLLECTION", "UsageRecorder", "UsageRow", "credit_totals"]

COLLECTION = "usage"

_LOG = logging.getLogger("meshgate.usage")


@dataclass(frozen=True, slots=True)
class UsageRow:
    namespace_id: str | None
    method: str | None
    start: datetime | None
    calls: int
    credits: int
    rate_limited: int
    by_status: dict[str, int]


@dataclass
class _Counter:
    calls: int = 0
    credits: int = 0
    rate_limited: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class UsageRecorder:
    mongo: MongoStore
    replica: str
    clock: Callable[[], float] = time.time  # wall clock, epoch seconds
    # told of every batch once it is stored (the credit accounts settle its credits)
    on_flushed: Callable[[LedgerBatch], None] | None = None
    # (organization_id, environment, namespace_id, method, hours since the epoch) -> counts
    _counters: dict[tuple[str, str, str, str, int], _Counter] = field(default_factory=dict)
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _sequence: int = 0
    _flushing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def collection(self) -> Any:
        return self.mongo.database[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index(
            [("organization_id", ASCENDING), ("hour", ASCENDING), ("namespace_id", ASCENDING)]
        )
        await self.collection.create_index([("organization_id", ASCENDING), ("period", ASCENDING)])

    def record(
        self,
        *,
        organization_id: str,
        environment: str,
        namespace_id: str,
        method: str,
        status: str,
        credits: int,
        rate_limited: bool,
        at: float | None = None,
    ) -> None:
        """One finished call, counted in the hour of `at` (when it started; default now)."""
        hour = int((self.clock() if at is None else at) // 3600)
        slot = (organization_id, environment, namespace_id, method, hour)
        counter = self._counters.get(slot)
        if counter is None:
            counter = self._counters[slot] = _Counter()
        counter.calls += 1
        counter.credits += credits
        counter.rate_limited += int(rate_limited)
        counter.by_status[status] += 1

    def _batch(self) -> list[dict[str, Any]]:
        counters, self._counters = self._counters, {}
        if not counters:
            return []
        self._sequence += 1
        hours = {slot[4]: datetime.fromtimestamp(slot[4] * 3600, UTC) for slot in counters}
        return [
            {
                "_id": f"{self.replica}:{self._sequence}:{index}",
                "writer": self.replica,
                "batch": self._sequence,
                "organization_id": organization_id,
                "environment": environment,
                "namespace_id": namespace_id,
                "method": method,
                "hour": hours[hour],
                "period": period_of(hours[hour]),
                "calls": c.calls,
                "credits": c.credits,
                "rate_limited": c.rate_limited,
                "by_status": dict(c.by_status),
            }
            for index, ((organization_id, environment, namespace_id, method, hour), c) in enumerate(
                counters.items()
            )
        ]

    async def flush(self) -> list[LedgerBatch]:
        """Store what was recorded until now: a batch that failed before (retried as is,
        same ids), then the counters. Returns the batches stored."""
        stored: list[LedgerBatch] = []
        async with self._flushing:
            for _ in range(2):
                if not self._pending:
                    self._pending = self._batch()
                if not self._pending:
                    break
                try:
                    await self.collection.insert_many(self._pending, ordered=False)
                except BulkWriteError as exc:  # duplicates: an earlier try got through
                    if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                        raise
                batch, self._pending = self._ledger_batch(self._pending), []
                stored.append(batch)
                if self.on_flushed is not None:
                    self.on_flushed(batch)
        return stored

    def _ledger_batch(self, docs: list[dict[str, Any]]) -> LedgerBatch:
        credits: dict[tuple[str, str], int] = defaultdict(int)
        for doc in docs:
            if doc["credits"]:
                credits[(doc["organization_id"], doc["period"])] += doc["credits"]
        return LedgerBatch(writer=docs[0]["writer"], batch=docs[0]["batch"], credits=credits)

    async def query(
        self,
        *,
        organization_id: str,
        environment: str,
        only_namespaces: frozenset[str],
        start: datetime,
        end: datetime,
        group_by: tuple[str, ...],
    ) -> list[UsageRow]:
        """Totals between start (inclusive) and end (exclusive), grouped by the given dimensions.

        Only calls made with keys of `environment` count (rows recorded before rows
        carried an environment have none and never count), and with `only_namespaces`
        only calls in those namespaces.
        """
        rows: dict[tuple[Any, ...], _Counter] = {}
        query: dict[str, Any] = {
            "organization_id": organization_id,
            "hour": {"$gte": start, "$lt": end},
            "environment": environment,
        }
        if only_namespaces:
            query["namespace_id"] = {"$in": sorted(only_namespaces)}
        cursor = self.collection.find(query)
        async for doc in cursor:
            hour: datetime = doc["hour"]
            bucket = (
                hour if "hour" in group_by else hour.replace(hour=0) if "day" in group_by else None
            )
            slot = (
                doc["namespace_id"] if "namespace" in group_by else None,
                doc["method"] if "method" in group_by else None,
                bucket,
            )
            counter = rows.setdefault(slot, _Counter())
            counter.calls += int(doc["calls"])
            counter.credits += int(doc["credits"])
            counter.rate_limited += int(doc["rate_limited"])
            for code, n in doc["by_status"].items():
                counter.by_status[code] += int(n)
        return [
            UsageRow(
                namespace_id=slot[0],
                method=slot[1],
                start=slot[2],
                calls=c.calls,
                credits=c.credits,
                rate_limited=c.rate_limited,
                by_status=dict(c.by_status),
            )
            for slot, c in sorted(rows.items(), key=lambda item: tuple(str(v) for v in item[0]))
        ]

    async def ledger_total(self, organization_id: str, period: str) -> int:
        return (await credit_totals(self.mongo, organization_id, period))[0]


async def credit_totals(
    mongo: MongoStore, organization_id: str, period: str
) -> tuple[int, dict[str, tuple[int, int]]]:
    """The period's credits in the usage ledger, and per writer its last batch and that
    batch's credits (documents written before writers were recorded count in the total
    only)."""
    total = 0
    writers: dict[str, tuple[int, int]] = {}
    cursor = mongo.database[COLLECTION].find(
        {"organization_id": organization_id, "period": period},
        projection={"credits": 1, "writer": 1, "batch": 1},
    )
    async for doc in cursor:
        credits = int(doc["credits"])
        total += credits
        writer = doc.get("writer")
        if writer is None:
            continue
        batch = int(doc["batch"])
        last, part = writers.get(writer, (0, 0))
        if batch > last:
            writers[writer] = (batch, credits)
        elif batch == last:
            writers[writer] = (batch, part + credits)
    return total, writers
