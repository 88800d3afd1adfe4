"""Wall-clock time as stored: UTC, truncated to the millisecond precision of BSON dates."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["rfc3339", "utc_now"]


def utc_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def rfc3339(moment: datetime) -> str:
    """`2026-11-29T04:05:06.123Z`: how event payloads write times."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
