"""Credit accounts in memory: what the credits step and the usage observer use
(`CreditDebits`, interceptors/credits.py; `CreditCompletions`, interceptors/usage.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from storage.core.errors import ResourceExhaustedError
from storage.metering.credits import period_end, period_of

__all__ = ["FakeCreditAccounts"]

_LOG = logging.getLogger("meshgate.credits")


@dataclass
class _Account:
    allowance: int
    held: int = 0  # debited by calls still running
    spent: int = 0  # debited by finished calls

    @property
    def left(self) -> int:
        return self.allowance - self.held - self.spent


class FakeCreditAccounts:
    """One account per organization and month (the month of `at`, when the call started),
    created by the first `debit` with the plan's allowance, as `CreditAccounts` creates
    its accounts. No reservations and no replicas: `try_debit` takes from the account
    itself. Debits never add up to more than the allowance; a refunded debit is available
    again, a spent one is not (tests/contracts/test_credit_accounts.py)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._accounts: dict[tuple[str, str], _Account] = {}
        self._clock = clock

    def _period(self, at: float | None) -> str:
        return period_of(datetime.fromtimestamp(self._clock() if at is None else at, UTC))

    def try_debit(self, organization_id: str, cost: int, *, at: float | None = None) -> bool:
        account = self._accounts.get((organization_id, self._period(at)))
        if account is None or account.left < cost:
            return False
        account.held += cost
        return True

    async def debit(
        self, organization_id: str, cost: int, *, allowance: int, at: float | None = None
    ) -> None:
        period = self._period(at)
        account = self._accounts.setdefault((organization_id, period), _Account(allowance))
        if account.left < cost:
            end = period_end(period)
            raise ResourceExhaustedError(
                "the organization's credits for this month are used up",
                retry_after_s=max(1.0, end.timestamp() - self._clock()),
            )
        account.held += cost

    def complete(
        self, organization_id: str, cost: int, *, refund: bool, at: float | None = None
    ) -> None:
        account = self._accounts.get((organization_id, self._period(at)))
        if account is None or account.held < cost:
            _LOG.error("credits completed that were never debited (%s)", organization_id)
            return
        account.held -= cost
        if not refund:
            account.spent += cost

    def spent(self, organization_id: str, *, at: float | None = None) -> int:
        """Credits charged to the month of `at` (default now) by finished calls."""
        account = self._accounts.get((organization_id, self._period(at)))
        return 0 if account is None else account.spent
