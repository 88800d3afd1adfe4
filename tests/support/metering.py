"""Credit accounts wired as a server wires them: a usage writer whose stored batches are
reported to the accounts, and the MongoDB ledger they rebuild from."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.backends.mongo import MongoStore
from storage.backends.redis_client import RedisClient
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import CreditAccounts
from storage.metering.ledger import MongoLedger
from storage.metering.usage import UsageRecorder

__all__ = ["Meter", "new_organization_id"]


def new_organization_id() -> str:
    return "org_" + secrets.token_hex(10)[:20]


@dataclass
class Meter:
    """One replica's credit accounts and usage writer."""

    accounts: CreditAccounts
    usage: UsageRecorder
    events: CreditEvents

    @classmethod
    def of(
        cls,
        redis: RedisClient,
        mongo: MongoStore,
        replica: str,
        clock: Callable[[], float] | None = None,
        record_thresholds: bool = False,
        **options: Any,
    ) -> Meter:
        """`record_thresholds`: the accounts record the 80/95/100 % thresholds in the credit
        events, as a server's do."""
        events = CreditEvents(mongo=mongo)
        if clock is not None:
            options["clock"] = clock
        if record_thresholds:
            options["on_threshold"] = events.record
        accounts = CreditAccounts(
            redis=redis,
            replica=replica,
            ledger=MongoLedger(mongo=mongo, events=events),
            **options,
        )
        usage = UsageRecorder(
            mongo=mongo,
            replica=replica,
            on_flushed=accounts.recorded,
            clock=clock if clock is not None else time.time,
        )
        return cls(accounts=accounts, usage=usage, events=events)

    async def spend(
        self, organization_id: str, cost: int, *, allowance: int, at: float | None = None
    ) -> None:
        """What a call does: debit (from the reservation, else waiting for Redis), finish,
        and count its usage; raises as `debit` does."""
        if not self.accounts.try_debit(organization_id, cost, at=at):
            await self.accounts.debit(organization_id, cost, allowance=allowance, at=at)
        self.finish(organization_id, cost, at=at)

    def finish(self, organization_id: str, cost: int, *, at: float | None = None) -> None:
        """The call that debited `cost` finished OK: charged, and its usage counted."""
        self.accounts.complete(organization_id, cost, refund=False, at=at)
        self.usage.record(
            organization_id=organization_id,
            environment="development",
            namespace_id="",
            method="/m",
            key_id="key_m",
            outcome="OK",
            status="OK",
            credits=cost,
            rate_limited=False,
            at=at,
        )

    async def flush(self, *, everything: bool = False) -> None:
        """The server's flush every second: the ledger, then the settlement."""
        await self.usage.flush()
        await self.accounts.settle(everything=everything)
