"""Credits as values: balances, what the ledger says, the months accounts belong to, and
one replica's reservation of an account (storage/metering/credits.py reserves and debits
it, storage/metering/credit_settlement.py settles it). No I/O."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from storage.backends.redis_keys import organization_key
from storage.metering.credit_scripts import AccountState

__all__ = [
    "THRESHOLDS",
    "Balance",
    "CreditPeriods",
    "Ledger",
    "LedgerBatch",
    "LedgerTotals",
    "Reservation",
    "TopUp",
    "account_key",
    "account_keys",
    "balance_of",
    "period_end",
    "period_of",
]

THRESHOLDS = (80, 95, 100)


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_end(period: str) -> datetime:
    year, month = (int(p) for p in period.split("-"))
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, last, 23, 59, 59, tzinfo=UTC)


def account_key(organization_id: str, period: str) -> str:
    """The Redis hash of an organization's account for one month."""
    return organization_key(organization_id, "credits", period)


def account_keys(organization_id: str, period: str) -> tuple[str, str]:
    """The account and the hash of which replicas hold what of it (its `:live` companion)."""
    account = account_key(organization_id, period)
    return account, f"{account}:live"


class CreditPeriods:
    """The month (`YYYY-MM`, UTC) of a moment on `clock`, recomputed only when the moment
    leaves the month it last computed."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._current = ""
        self._from = float("inf")
        self._until = float("-inf")

    def of(self, at: float | None = None) -> str:
        """The period of `at` (epoch seconds; default now)."""
        now = self._clock() if at is None else at
        if not self._from <= now < self._until:
            moment = datetime.fromtimestamp(now, UTC)
            self._current = period_of(moment)
            start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            self._from = start.timestamp()
            self._until = (period_end(self._current) + timedelta(seconds=1)).timestamp()
        return self._current


@dataclass(frozen=True, slots=True)
class Balance:
    period: str
    allowance: int
    granted: int
    remaining: int
    used: int
    reserved: int

    @property
    def total(self) -> int:
        return self.allowance + self.granted

    def consumed_percent(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * (self.used + self.reserved) / self.total


def balance_of(period: str, state: AccountState) -> Balance:
    return Balance(
        period, state.allowance, state.granted, state.balance, state.used, state.reserved
    )


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """An organization's period as the ledger has it."""

    used: int
    granted: int
    # the grants counted in `granted`
    grants: tuple[str, ...] = ()
    # usage writer -> (its last batch seen, the credits of that batch seen)
    writers: Mapping[str, tuple[int, int]] = field(default_factory=dict)


class Ledger(Protocol):
    """Reads the ledger (storage/metering/ledger.py)."""

    async def totals(self, organization_id: str, period: str) -> LedgerTotals: ...


@dataclass(frozen=True, slots=True)
class LedgerBatch:
    """One batch of usage documents stored: its writer and number, and the credits it
    recorded per (organization_id, period)."""

    writer: str
    batch: int
    credits: Mapping[tuple[str, str], int]


@dataclass(frozen=True, slots=True)
class TopUp:
    """What one reservation script answered: an error, or the grant and what it was for."""

    error: BaseException | None = None
    granted: int = 0
    need: int = 0
    # credits that other replicas hold (spent or not) right after it
    others_hold: int = 0


@dataclass
class Reservation:
    """What one replica holds of one account (organization and month)."""

    allowance: int
    available: int = 0
    held: int = 0  # debited by calls still running
    spent: int = 0  # debited by finished calls, not in the ledger yet
    # in the ledger, not settled yet: (writer, batch, credits)
    recorded: list[tuple[str, int, int]] = field(default_factory=list)
    last_used: float = 0.0
    size: int = 0  # the last batch asked for
    topped_up_at: float = float("-inf")
    waiting: int = 0  # the cost of the calls waiting for a reservation
    pending: asyncio.Task[TopUp] | None = None
    # set while a settle script runs for it (top-ups wait for it)
    settling: asyncio.Event | None = None

    @property
    def outstanding(self) -> bool:
        return bool(self.available or self.held or self.spent or self.recorded)
