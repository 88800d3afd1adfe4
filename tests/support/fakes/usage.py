"""The usage ledger in memory: where the usage observer counts finished calls
(`UsageCounts`, interceptors/usage.py), with the recorder's `flush` and `query`."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from storage.metering.credits import LedgerBatch, period_of
from storage.metering.usage import UsageRow

__all__ = ["FakeUsage"]

# (organization_id, environment, namespace_id, method, hour since the epoch, key_id, outcome)
_Slot = tuple[str, str, str, str, int, str, str]


@dataclass
class _Counts:
    calls: int = 0
    credits: int = 0
    rate_limited: int = 0
    by_status: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Counts) -> None:
        self.calls += other.calls
        self.credits += other.credits
        self.rate_limited += other.rate_limited
        self.by_status.update(other.by_status)


class FakeUsage:
    """`UsageRecorder` without MongoDB: calls counted per hour, organization, environment,
    namespace, method, key and outcome; `flush` stores them as one batch of this writer (and tells
    `on_flushed`, as the recorder tells the credit accounts); `query` sums what was stored
    (tests/contracts/test_usage.py holds it to the recorder's answers)."""

    def __init__(
        self,
        *,
        replica: str = "fake",
        clock: Callable[[], float] = time.time,
        on_flushed: Callable[[LedgerBatch], None] | None = None,
    ) -> None:
        self._replica = replica
        self._clock = clock
        self._on_flushed = on_flushed
        self._counting: dict[_Slot, _Counts] = {}
        self._stored: list[tuple[_Slot, _Counts]] = []
        self._batches = 0

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
        hour = int((self._clock() if at is None else at) // 3600)
        counts = self._counting.setdefault(
            (organization_id, environment, namespace_id, method, hour, key_id, outcome), _Counts()
        )
        counts.add(_Counts(1, credits, int(rate_limited), Counter({status: 1})))

    async def flush(self) -> list[LedgerBatch]:
        counting, self._counting = self._counting, {}
        if not counting:
            return []
        self._batches += 1
        self._stored.extend(counting.items())
        credits: Counter[tuple[str, str]] = Counter()
        for (organization_id, _, _, _, hour, _, _), counts in counting.items():
            if counts.credits:
                credits[(organization_id, period_of(_hour(hour)))] += counts.credits
        batch = LedgerBatch(writer=self._replica, batch=self._batches, credits=dict(credits))
        if self._on_flushed is not None:
            self._on_flushed(batch)
        return [batch]

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
        rows: dict[tuple[str | datetime | None, ...], _Counts] = {}
        for (
            organization,
            env,
            namespace_id,
            method,
            hour,
            key_id,
            outcome,
        ), counts in self._stored:
            moment = _hour(hour)
            if organization != organization_id or env != environment:
                continue
            if not start <= moment < end:
                continue
            if only_namespaces and namespace_id not in only_namespaces:
                continue
            if key_ids is not None and key_id not in key_ids:
                continue
            if outcomes and outcome not in outcomes:
                continue
            bucket = (
                moment
                if "hour" in group_by
                else moment.replace(hour=0)
                if "day" in group_by
                else None
            )
            slot = (
                namespace_id if "namespace" in group_by else None,
                method if "method" in group_by else None,
                bucket,
                key_id if "key" in group_by else None,
                outcome if "outcome" in group_by else None,
            )
            rows.setdefault(slot, _Counts()).add(counts)
        return [
            UsageRow(
                namespace_id=_text(slot[0]),
                method=_text(slot[1]),
                start=slot[2] if isinstance(slot[2], datetime) else None,
                key_id=_text(slot[3]),
                outcome=_text(slot[4]),
                calls=c.calls,
                credits=c.credits,
                rate_limited=c.rate_limited,
                by_status=dict(c.by_status),
            )
            for slot, c in sorted(rows.items(), key=lambda item: tuple(str(v) for v in item[0]))
        ]


def _hour(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * 3600, UTC)


def _text(value: str | datetime | None) -> str | None:
    return value if isinstance(value, str) else None
