"""Credit threshold events (80 %, 95 %, 100 % of a period's credits), recorded once per period.

The document id is organization + period + threshold, so replicas crossing a
threshold at the same time record it once. Webhooks (`credits.threshold`)
deliver from here.
"""

from __future__ import annotations

import logging

from pymongo.errors import DuplicateKeyError

from storage.clock import utc_now
from storage.credits import Balance
from storage.mongo import MongoStore

__all__ = ["CreditEvents"]

_LOG = logging.getLogger("meshgate.credits")


class CreditEvents:
    def __init__(self, *, mongo: MongoStore) -> None:
        self._collection = mongo.database["credit_events"]

    async def record(
        self, organization_id: str, period: str, threshold: int, balance: Balance
    ) -> None:
        try:
            await self._collection.insert_one(
                {
                    "_id": f"{organization_id}:{period}:{threshold}",
                    "organization_id": organization_id,
                    "type": "credits.threshold",
                    "period": period,
                    "threshold": threshold,
                    "total": balance.total,
                    "consumed": balance.used + balance.reserved,
                    "time": utc_now(),
                }
            )
            _LOG.info(
                "organization %s crossed %d%% of its credits for %s",
                organization_id,
                threshold,
                period,
            )
        except DuplicateKeyError:
            pass

    async def record_grant(
        self, organization_id: str, period: str, credits: int, *, by: str
    ) -> None:
        """Grants are ledger entries too: the period's total is allowance + the sum of grants."""
        await self._collection.insert_one(
            {
                "organization_id": organization_id,
                "type": "credits.granted",
                "period": period,
                "credits": credits,
                "by": by,
                "time": utc_now(),
            }
        )

    async def granted(self, organization_id: str, period: str) -> int:
        cursor = self._collection.find(
            {"organization_id": organization_id, "period": period, "type": "credits.granted"}
        )
        return sum([int(doc["credits"]) async for doc in cursor])

    async def thresholds(self, organization_id: str, period: str) -> list[int]:
        cursor = self._collection.find(
            {"organization_id": organization_id, "period": period, "type": "credits.threshold"}
        )
        return sorted([int(doc["threshold"]) async for doc in cursor])
