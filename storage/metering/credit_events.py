"""Credit threshold events (80 %, 95 %, 100 % of a period's credits), recorded once per period.

The document id is organization + period + threshold, so replicas crossing a
threshold at the same time record it once. Each is then published to the
organization's `credits.threshold` webhooks (storage/webhooks/organization_events.py)
and marked published; a replica that finds it recorded but not yet published
(the first one failed or died in between) publishes it again, idempotently.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.core.clock import utc_now
from storage.metering.credits import Balance

__all__ = ["CreditEvents", "ThresholdPublisher"]

_LOG = logging.getLogger("meshgate.credits")


class ThresholdPublisher(Protocol):
    """Sends an organization event to its webhooks (storage/webhooks/organization_events.py).

    Idempotent by `happening`: a second publish of the same threshold completes an
    interrupted fan-out and duplicates nothing.
    """

    async def publish(
        self,
        *,
        organization_id: str,
        event_type: str,
        data: Mapping[str, Any],
        happening: str,
        at: datetime,
    ) -> object: ...


class CreditEvents:
    @property
    def _collection(self) -> AsyncCollection[dict[str, Any]]:
        """Taken at each call: the client behind it can be switched (MongoStore.switch)."""
        return self._mongo.database["credit_events"]

    def __init__(self, *, mongo: MongoStore, publisher: ThresholdPublisher | None = None) -> None:
        self._mongo = mongo
        # without a publisher (no webhooks wired) threshold events are only recorded
        self._publisher = publisher
        # threshold (80, 95, 100) -> crossings this process recorded first (each crossing
        # of an organization and period is recorded once, fleet-wide)
        self.crossed: dict[int, int] = {}

    async def record(
        self, organization_id: str, period: str, threshold: int, balance: Balance
    ) -> None:
        fresh: dict[str, Any] = {
            "_id": f"{organization_id}:{period}:{threshold}",
            "organization_id": organization_id,
            "type": "credits.threshold",
            "period": period,
            "threshold": threshold,
            "total": balance.total,
            "consumed": balance.used + balance.reserved,
            "time": utc_now(),
            "published": False,
        }
        doc: dict[str, Any] | None = fresh
        try:
            await self._collection.insert_one(fresh)
            self.crossed[threshold] = self.crossed.get(threshold, 0) + 1
            _LOG.info(
                "organization %s crossed %d%% of its credits for %s",
                organization_id,
                threshold,
                period,
            )
        except DuplicateKeyError:  # recorded already, here or by another replica
            doc = await self._collection.find_one({"_id": fresh["_id"]})
        if doc is not None and doc.get("published") is False:
            await self._publish(doc)

    async def _publish(self, doc: dict[str, Any]) -> None:
        if self._publisher is None:
            return
        await self._publisher.publish(
            organization_id=doc["organization_id"],
            event_type="credits.threshold",
            data={
                "organization_id": doc["organization_id"],
                "period": doc["period"],
                "threshold": doc["threshold"],
                "total": doc["total"],
                "consumed": doc["consumed"],
            },
            happening=f"credits.threshold:{doc['_id']}",
            at=doc["time"],
        )
        await self._collection.update_one({"_id": doc["_id"]}, {"$set": {"published": True}})

    async def record_grant(
        self, organization_id: str, period: str, credits: int, *, by: str
    ) -> str:
        """Grants are ledger entries too: the period's total is allowance + the sum of grants.
        Recorded before Redis adds it, under the id returned (Redis adds each id once)."""
        grant_id = f"grant_{secrets.token_hex(12)}"
        await self._collection.insert_one(
            {
                "_id": grant_id,
                "organization_id": organization_id,
                "type": "credits.granted",
                "period": period,
                "credits": credits,
                "by": by,
                "time": utc_now(),
            }
        )
        return grant_id

    async def grants(self, organization_id: str, period: str) -> list[tuple[str, int]]:
        """The period's grants: (grant id, credits)."""
        cursor = self._collection.find(
            {"organization_id": organization_id, "period": period, "type": "credits.granted"}
        )
        return [(str(doc["_id"]), int(doc["credits"])) async for doc in cursor]

    async def thresholds(self, organization_id: str, period: str) -> list[int]:
        cursor = self._collection.find(
            {"organization_id": organization_id, "period": period, "type": "credits.threshold"}
        )
        return sorted([int(doc["threshold"]) async for doc in cursor])
