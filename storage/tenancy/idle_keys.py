"""The conditional writes of the idle-key job (server/workers/key_idle.py).

Every write names what it read — the key's last-used time, and that it is neither
revoked nor disabled — so replicas running the job at once cannot both win, and a
use recorded in between makes the write miss:

- `mark_idle` notes that the key was seen idle since a given last use (its
  "idle token"). A key is disabled only in a later round, once the mark is older
  than `confirm`: last-used times are written in batches (every 30 s by each
  replica's verifier), so a use not yet written when the key was first seen idle
  has moved `last_used_at` by then, and the disabling write misses.
- `disable` sets `disabled_at` for exactly one replica, which then audits it.
- `claim_notice` records that the `key.expiring` notice of one idle period went
  out; exactly one replica wins it and audits it.
- `disabled_unannounced` / `announced` let any replica finish the `key.disabled`
  event of a disabling whose replica died before publishing it (the event id is
  derived from the key, so publishing twice sends it once).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from storage.backends.mongo import MongoStore
from storage.core.clock import rfc3339, utc_now
from storage.tenancy.keys import KeyRecord, idle_since_before, key_from_doc

__all__ = ["IdleKeyStore", "idle_token"]

# keys handled per organization, environment and round; the next round takes the rest
ROUND_LIMIT = 1000


def idle_token(key: KeyRecord) -> str:
    """Names one idle period of a key: the last use it began with."""
    return rfc3339(key.last_used_at) if key.last_used_at else "never"


class IdleKeyStore:
    def __init__(self, *, mongo: MongoStore, now: Callable[[], datetime] = utc_now) -> None:
        self._collection = mongo.keys
        self._now = now

    async def idle_since(
        self, *, organization_id: str, environment: str, cutoff: datetime
    ) -> list[KeyRecord]:
        """Active keys (not revoked, disabled or expired) unused since before `cutoff`."""
        now = self._now()
        query: dict[str, Any] = {
            "organization_id": organization_id,
            "environment": environment,
            "revoked_at": None,
            "disabled_at": None,
            "$and": [
                {"$or": idle_since_before(cutoff)},
                {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]},
            ],
        }
        cursor = self._collection.find(query).sort("_id", 1).limit(ROUND_LIMIT)
        return [key_from_doc(doc) async for doc in cursor]

    @staticmethod
    def _unchanged(key: KeyRecord) -> dict[str, Any]:
        return {
            "_id": key.key_id,
            "revoked_at": None,
            "disabled_at": None,
            "last_used_at": key.last_used_at,
        }

    async def mark_idle(self, key: KeyRecord) -> None:
        """Note the key idle (once per idle period: the first mark's time is kept)."""
        await self._collection.update_one(
            {**self._unchanged(key), "idle_mark": {"$ne": idle_token(key)}},
            {"$set": {"idle_mark": idle_token(key), "idle_mark_at": self._now()}},
        )

    async def disable(self, key: KeyRecord, *, confirm: timedelta) -> datetime | None:
        """Disable the key if it is still idle and was marked at least `confirm` ago; the
        time it was disabled, or None when this call did not do it."""
        now = self._now()
        result = await self._collection.update_one(
            {
                **self._unchanged(key),
                "idle_mark": idle_token(key),
                "idle_mark_at": {"$lte": now - confirm},
            },
            {"$set": {"disabled_at": now, "disabled_announced": False}},
        )
        return now if result.modified_count == 1 else None

    async def claim_notice(self, key: KeyRecord) -> bool:
        """True for the one caller that records this idle period's notice."""
        result = await self._collection.update_one(
            {**self._unchanged(key), "notice_for": {"$ne": idle_token(key)}},
            {"$set": {"notice_for": idle_token(key)}},
        )
        return result.modified_count == 1

    async def disabled_unannounced(self, *, organization_id: str) -> list[KeyRecord]:
        cursor = self._collection.find(
            {"organization_id": organization_id, "disabled_announced": False}
        ).limit(ROUND_LIMIT)
        return [key_from_doc(doc) async for doc in cursor]

    async def announced(self, key_id: str) -> None:
        await self._collection.update_one(
            {"_id": key_id, "disabled_announced": False}, {"$set": {"disabled_announced": True}}
        )
