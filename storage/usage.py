"""Usage analytics: every call of an authenticated caller is counted, every debit is a ledger event.

Recording is in memory (no I/O on the call path); `flush` runs every second:
- `usage_events`: one document per credit-bearing call (the ledger), keyed by
  a server-generated call id, so retrying a flush never counts twice;
- `usage_hourly`: counters per organization, namespace, method and hour
  (calls, credits, calls by status code, rate-limit rejections), updated with
  `$inc` upserts — a handful of writes per flush whatever the traffic.

Usage is organization-level data: every query filters on organization_id;
namespace_id is a dimension ("" for calls outside any namespace). It outlives
namespace deletion on purpose (billing history).
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from storage.clock import utc_now
from storage.credits import period_of
from storage.mongo import MongoStore

__all__ = ["UsageRecorder", "UsageRow"]

_LOG = logging.getLogger("meshgate.usage")
GROUPS = ("namespace", "method", "day", "hour")


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
    now: Callable[[], datetime] = utc_now
    max_buffer: int = 100_000
    _events: list[dict[str, Any]] = field(default_factory=list)
    _counters: dict[tuple[str, str, str, datetime], _Counter] = field(default_factory=dict)
    dropped: int = 0

    @property
    def events(self) -> Any:
        return self.mongo.database["usage_events"]

    @property
    def hourly(self) -> Any:
        return self.mongo.database["usage_hourly"]

    async def ensure_indexes(self) -> None:
        await self.events.create_index(
            [("organization_id", ASCENDING), ("period", ASCENDING), ("time", ASCENDING)]
        )
        await self.hourly.create_index(
            [("organization_id", ASCENDING), ("hour", ASCENDING), ("namespace_id", ASCENDING)]
        )

    def record(
        self,
        *,
        organization_id: str,
        namespace_id: str,
        method: str,
        key_id: str,
        request_id: str,
        status: str,
        credits: int,
        rate_limited: bool,
    ) -> None:
        now = self.now()
        hour = now.replace(minute=0, second=0, microsecond=0)
        counter = self._counters.get((organization_id, namespace_id, method, hour))
        if counter is None:
            counter = self._counters[(organization_id, namespace_id, method, hour)] = _Counter()
        counter.calls += 1
        counter.credits += credits
        counter.rate_limited += int(rate_limited)
        counter.by_status[status] += 1
        if credits:
            if len(self._events) >= self.max_buffer:  # the store has been down for a long time
                self.dropped += 1
                _LOG.error("usage ledger buffer full; dropping an event")
                return
            self._events.append(
                {
                    "_id": secrets.token_hex(12),
                    "organization_id": organization_id,
                    "namespace_id": namespace_id,
                    "method": method,
                    "key_id": key_id,
                    "request_id": request_id,
                    "status": status,
                    "credits": credits,
                    "time": now,
                    "period": period_of(now),
                }
            )

    async def flush(self) -> None:
        """Store buffered events and counters; on failure they stay buffered for the next try."""
        events, self._events = self._events, []
        if events:
            try:
                await self.events.insert_many(events, ordered=False)
            except BulkWriteError as exc:  # duplicates of a retried flush are fine
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    self._events[:0] = events
                    raise
            except Exception:
                self._events[:0] = events  # retried next time; ids make the retry idempotent
                raise
        counters, self._counters = self._counters, {}
        if not counters:
            return
        operations = []
        for (organization_id, namespace_id, method, hour), c in counters.items():
            inc: dict[str, int] = {
                "calls": c.calls,
                "credits": c.credits,
                "rate_limited": c.rate_limited,
            }
            inc.update({f"by_status.{code}": n for code, n in c.by_status.items()})
            operations.append(
                UpdateOne(
                    {
                        "organization_id": organization_id,
                        "namespace_id": namespace_id,
                        "method": method,
                        "hour": hour,
                    },
                    {"$inc": inc},
                    upsert=True,
                )
            )
        try:
            await self.hourly.bulk_write(operations, ordered=False)
        except Exception:
            for slot, c in counters.items():  # put them back; merged with new ones next time
                mine = self._counters.setdefault(slot, _Counter())
                mine.calls += c.calls
                mine.credits += c.credits
                mine.rate_limited += c.rate_limited
                for code, n in c.by_status.items():
                    mine.by_status[code] += n
            raise

    async def query(
        self,
        *,
        organization_id: str,
        start: datetime,
        end: datetime,
        group_by: tuple[str, ...],
    ) -> list[UsageRow]:
        """Totals between start (inclusive) and end (exclusive), grouped by the given dimensions."""
        rows: dict[tuple[Any, ...], _Counter] = {}
        cursor = self.hourly.find(
            {"organization_id": organization_id, "hour": {"$gte": start, "$lt": end}}
        )
        async for doc in cursor:
            hour: datetime = doc["hour"]
            start_of = (
                hour if "hour" in group_by else hour.replace(hour=0) if "day" in group_by else None
            )
            slot = (
                doc["namespace_id"] if "namespace" in group_by else None,
                doc["method"] if "method" in group_by else None,
                start_of,
            )
            counter = rows.setdefault(slot, _Counter())
            counter.calls += int(doc.get("calls", 0))
            counter.credits += int(doc.get("credits", 0))
            counter.rate_limited += int(doc.get("rate_limited", 0))
            for code, n in (doc.get("by_status") or {}).items():
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
        total = 0
        async for doc in self.events.find({"organization_id": organization_id, "period": period}):
            total += int(doc["credits"])
        return total
