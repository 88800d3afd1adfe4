"""Usage analytics and the credit ledger: counted in memory, stored once per second, exactly once.

Recording a call is a dictionary update (no I/O on the call path). Every
second `flush` turns the counters into one `usage` document per organization,
environment, namespace, method, hour, key and outcome that saw calls (calls,
credits, calls by status code, rate-limit refusals), with an id made of the
replica, a flush sequence number and an index. A flush that fails is retried with the same documents
and ids, so nothing is counted twice or lost; counters recorded meanwhile go
into the next batch. Flushes run one at a time, so a writer's batches are
stored in the order of their numbers.

These documents are the credit ledger: each says which writer stored it in
which batch, and every stored batch is reported (`on_flushed`) to the credit
accounts, which then settle exactly those credits in Redis; a Redis account
that was lost is rebuilt from them (storage/metering/credits.py).

Usage is organization-level data: every query filters on organization_id;
namespace_id is a dimension ("" for calls outside any namespace), and so are the
environment of the caller's key, by which GetUsage shows each key only its own
environment, the key (by which it shows each key only the keys within its reach) and
the outcome (storage/core/outcomes.py). It outlives namespace deletion on purpose
(billing history). A call whose key is unknown (or malformed, or missing) belongs to no
organization: it is counted under organization "" and key "" (`UNATTRIBUTED`), which no
organization's query can name.

The counters hold one entry per distinct slot seen since the last stored flush: at
most one per call, and at most `max_entries`. Beyond it, a call that charged nothing
(a refusal) and would open a new entry is counted in the unattributed slot of its
method and outcome instead (`folded`, logged at the next flush); a charged call always
keeps its own entry, because these documents are the credit ledger.
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

__all__ = ["COLLECTION", "UNATTRIBUTED", "UsageRecorder", "UsageRow", "credit_totals"]

COLLECTION = "usage"
# the organization (and key) of calls whose key is unknown: never an organization_id
UNATTRIBUTED = ""
MAX_ENTRIES = 100_000

_LOG = logging.getLogger("meshgate.usage")


@dataclass(frozen=True, slots=True)
class UsageRow:
    namespace_id: str | None
    method: str | None
    start: datetime | None
    # None: not grouped by it; "": recorded before rows carried it
    key_id: str | None
    outcome: str | None
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


_Slot = tuple[str, str, str, str, int, str, str]


@dataclass
class UsageRecorder:
    mongo: MongoStore
    replica: str
    clock: Callable[[], float] = time.time  # wall clock, epoch seconds
    # told of every batch once it is stored (the credit accounts settle its credits)
    on_flushed: Callable[[LedgerBatch], None] | None = None
    # distinct slots kept between stored flushes (see the module's docstring)
    max_entries: int = MAX_ENTRIES
    # refusals counted unattributed because the counters were full (since start)
    folded: int = 0
    # (organization_id, environment, namespace_id, method, hours since the epoch, key_id,
    # outcome) -> counts
    _counters: dict[_Slot, _Counter] = field(default_factory=dict)
    _folded_unlogged: int = 0
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
        key_id: str,
        outcome: str,
        status: str,
        credits: int,
        rate_limited: bool,
        at: float | None = None,
    ) -> None:
        """One finished call, counted in the hour of `at` (when it started; default now)."""
        hour = int((self.clock() if at is None else at) // 3600)
        slot = (organization_id, environment, namespace_id, method, hour, key_id, outcome)
        counter = self._counters.get(slot)
        if counter is None:
            if len(self._counters) >= self.max_entries and not credits:
                self.folded += 1
                self._folded_unlogged += 1
                slot = (UNATTRIBUTED, "", "", method, hour, UNATTRIBUTED, outcome)
                counter = self._counters.get(slot)
            if counter is None:
                counter = self._counters[slot] = _Counter()
        counter.calls += 1
        counter.credits += credits
        counter.rate_limited += int(rate_limited)
        counter.by_status[status] += 1

    def _batch(self) -> list[dict[str, Any]]:
        counters, self._counters = self._counters, {}
        if self._folded_unlogged:
            _LOG.warning(
                "usage counters were full (%d entries): %d refused calls were counted without"
                " their organization and key",
                self.max_entries,
                self._folded_unlogged,
            )
            self._folded_unlogged = 0
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
                "key_id": key_id,
                "outcome": outcome,
                "hour": hours[hour],
                "period": period_of(hours[hour]),
                "calls": c.calls,
                "credits": c.credits,
                "rate_limited": c.rate_limited,
                "by_status": dict(c.by_status),
            }
            for index, (
                (organization_id, environment, namespace_id, method, hour, key_id, outcome),
                c,
            ) in enumerate(counters.items())
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

    def _selection(
        self,
        *,
        organization_id: str,
        environment: str,
        only_namespaces: frozenset[str],
        start: datetime,
        end: datetime,
        key_ids: frozenset[str] | None,
        outcomes: frozenset[str],
    ) -> dict[str, Any]:
        query: dict[str, Any] = {
            "organization_id": organization_id,
            "hour": {"$gte": start, "$lt": end},
            "environment": environment,
        }
        if only_namespaces:
            query["namespace_id"] = {"$in": sorted(only_namespaces)}
        if key_ids is not None:
            query["key_id"] = {"$in": sorted(key_ids)}
        if outcomes:
            query["outcome"] = {"$in": sorted(outcomes)}
        return query

    async def keys_in(
        self,
        *,
        organization_id: str,
        environment: str,
        only_namespaces: frozenset[str],
        start: datetime,
        end: datetime,
        outcomes: frozenset[str],
    ) -> set[str]:
        """The keys that made the calls `query` would count (before any reach rule)."""
        selection = self._selection(
            organization_id=organization_id,
            environment=environment,
            only_namespaces=only_namespaces,
            start=start,
            end=end,
            key_ids=None,
            outcomes=outcomes,
        )
        found = await self.collection.distinct("key_id", selection)
        return {key for key in found if isinstance(key, str) and key}

    async def query(
        self,
        *,
        organization_id: str,
        environment: str,
        only_namespaces: frozenset[str],
        start: datetime,
        end: datetime,
        group_by: tuple[str, ...],
        key_ids: frozenset[str] | None = None,
        outcomes: frozenset[str] = frozenset(),
    ) -> list[UsageRow]:
        """Totals between start (inclusive) and end (exclusive), grouped by the given dimensions.

        Only calls made with keys of `environment` count (rows recorded before rows
        carried an environment have none and never count), with `only_namespaces` only
        calls in those namespaces, with `key_ids` only calls by those keys (rows recorded
        before rows carried a key count only when `key_ids` is None), with `outcomes` only
        calls with those outcomes.
        """
        rows: dict[tuple[Any, ...], _Counter] = {}
        selection = self._selection(
            organization_id=organization_id,
            environment=environment,
            only_namespaces=only_namespaces,
            start=start,
            end=end,
            key_ids=key_ids,
            outcomes=outcomes,
        )
        async for doc in self.collection.find(selection):
            hour: datetime = doc["hour"]
            bucket = (
                hour if "hour" in group_by else hour.replace(hour=0) if "day" in group_by else None
            )
            slot = (
                doc["namespace_id"] if "namespace" in group_by else None,
                doc["method"] if "method" in group_by else None,
                bucket,
                doc.get("key_id") or "" if "key" in group_by else None,
                doc.get("outcome") or "" if "outcome" in group_by else None,
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
                key_id=slot[3],
                outcome=slot[4],
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
