"""The credit ledger in MongoDB, as the credit accounts read it to rebuild a period.

Used credits are the usage documents' (storage/metering/usage.py), grants are
`credits.granted` events (storage/metering/credit_events.py). Read only when a
period's account is missing in Redis: at an organization's first call of a
month, or after Redis lost its data.
"""

from __future__ import annotations

from storage.backends.mongo import MongoStore
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import LedgerTotals
from storage.metering.usage import credit_totals

__all__ = ["MongoLedger"]


class MongoLedger:
    def __init__(self, *, mongo: MongoStore, events: CreditEvents) -> None:
        self._mongo = mongo
        self._events = events

    async def totals(self, organization_id: str, period: str) -> LedgerTotals:
        used, writers = await credit_totals(self._mongo, organization_id, period)
        grants = await self._events.grants(organization_id, period)
        return LedgerTotals(
            used=used,
            granted=sum(credits for _, credits in grants),
            grants=tuple(grant_id for grant_id, _ in grants),
            writers=writers,
        )
