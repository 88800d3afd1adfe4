"""Credits settled: what the ledger recorded moves from a replica's reservation to `used`,
what it holds idle (or what others need) goes back, and a missing account is rebuilt
from the ledger. The reservations are the call path's (storage/metering/credits.py); this
side runs once a second (`settle`, with the usage flush), at shutdown, and when an
account is missing. The design: storage/metering/credits.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from storage.backends.deadlines import within
from storage.metering.credit_balances import (
    THRESHOLDS,
    Balance,
    CreditPeriods,
    Ledger,
    LedgerBatch,
    Reservation,
    account_key,
    account_keys,
    balance_of,
)
from storage.metering.credit_scripts import PERIOD_TTL_MS, AccountState, CreditScripts

__all__ = ["CreditSettlement", "ThresholdRecorder"]

_LOG = logging.getLogger("meshgate.credits")

ThresholdRecorder = Callable[[str, str, int, Balance], Awaitable[None]]


class CreditSettlement:
    """The settlement side of one replica's credit accounts."""

    def __init__(
        self,
        *,
        scripts: CreditScripts,
        ledger: Ledger,
        replica: str,
        reservations: dict[tuple[str, str], Reservation],
        periods: CreditPeriods,
        timeout_s: float,
        rebuild_timeout_s: float,
        idle_release_s: float,
        settle_interval_s: float,
        monotonic: Callable[[], float],
        on_threshold: ThresholdRecorder | None,
    ) -> None:
        self._scripts = scripts
        self._ledger = ledger
        self._replica = replica
        # the call path's reservations (storage/metering/credits.py): settled here
        self._reservations = reservations
        self._periods = periods
        self._timeout_s = timeout_s
        self._rebuild_timeout_s = rebuild_timeout_s
        self._idle_release_s = idle_release_s
        self._settle_interval_s = settle_interval_s
        self._monotonic = monotonic
        self._on_threshold = on_threshold
        self._notified: set[tuple[str, str, int]] = set()
        self._settling = asyncio.Lock()

    def recorded(self, batch: LedgerBatch) -> None:
        """The usage writer stored `batch`: its credits are in the ledger now, to be
        settled (the writer calls this after every batch it stores)."""
        for slot, credits in batch.credits.items():
            reservation = self._reservations.get(slot)
            if reservation is None:
                continue
            moved = min(credits, reservation.spent)
            if moved:
                reservation.spent -= moved
                reservation.recorded.append((batch.writer, batch.batch, moved))

    async def settle(self, *, everything: bool = False) -> None:
        """Move what the ledger recorded to `used`, hand back what is idle or wanted
        elsewhere (all of it with `everything`, at shutdown), and reconcile what this
        replica holds with what Redis says it holds. One settle at a time."""
        async with self._settling:
            now = self._monotonic()
            current = self._periods.of()
            for slot, reservation in list(self._reservations.items()):
                stale = slot[1] != current
                if reservation.outstanding:
                    release_all = (
                        everything or stale or now - reservation.last_used > self._idle_release_s
                    )
                    await self._settle_one(slot, reservation, release_all=release_all)
                if stale and not reservation.outstanding and reservation.pending is None:
                    self._reservations.pop(slot, None)

    async def _settle_one(
        self, slot: tuple[str, str], reservation: Reservation, *, release_all: bool
    ) -> None:
        """One account's settlement, with no other script of this replica on it in flight
        (top-ups wait for it), so what Redis says this replica holds can be compared with
        what it holds. Its unspent credits are set aside meanwhile: calls cannot take what
        the script may be handing back."""
        while reservation.pending is not None:
            await asyncio.shield(reservation.pending)
        organization_id, period = slot
        done = reservation.settling = asyncio.Event()
        offered, reservation.available = reservation.available, 0
        released = 0
        try:
            chunks = list(reservation.recorded)
            held = reservation.held + reservation.spent
            reply = None
            for _ in range(2):
                reply = await within(
                    self._scripts.settle(
                        account_keys(organization_id, period),
                        replica=self._replica,
                        release_all=release_all,
                        unspent=offered,
                        held=held,
                        reconcile=True,
                        short_window_ms=int(3000 * self._settle_interval_s),
                        chunks=chunks,
                    ),
                    self._timeout_s,
                )
                if reply is not None:
                    break
                await within(
                    self.rebuild(organization_id, period, allowance=reservation.allowance),
                    self._rebuild_timeout_s,
                )
            if reply is None:
                raise RedisError("the credit account vanished while it was being rebuilt")
            del reservation.recorded[: len(chunks)]
            released = reply.released
            # Redis no longer knows part of what this replica held (it lost its data): what
            # was not spent yet is gone; what was is debited from the balance when it settles
            released += max(0, min(offered - released, held + offered - released - reply.mine))
        finally:
            reservation.available += offered - released
            reservation.settling = None
            done.set()
        await self.thresholds(organization_id, period, balance_of(period, reply.state))

    async def rebuild(self, organization_id: str, period: str, *, allowance: int) -> bool:
        """Create the period's account from the ledger unless it exists; True if this call
        created it. Replicas rebuilding at once count once: the first write wins."""
        totals = await self._ledger.totals(organization_id, period)
        created = await self._scripts.rebuild(
            account_key(organization_id, period),
            allowance=allowance,
            ttl_ms=PERIOD_TTL_MS,
            used=totals.used,
            granted=totals.granted,
            writers=[(w, batch, part) for w, (batch, part) in totals.writers.items()],
            grants=totals.grants,
        )
        if created and (totals.used or totals.granted):
            _LOG.warning(
                "rebuilt the %s credits of %s from the ledger: %d used, %d granted",
                period,
                organization_id,
                totals.used,
                totals.granted,
            )
        return created

    async def _account(
        self,
        organization_id: str,
        period: str,
        allowance: int,
        read: Callable[[], Awaitable[AccountState | None]],
    ) -> Balance:
        for _ in range(2):
            state = await read()
            if state is not None:
                return balance_of(period, state)
            await self.rebuild(organization_id, period, allowance=allowance)
        raise RedisError("the credit account vanished while it was being rebuilt")

    async def grant(
        self, organization_id: str, amount: int, *, allowance: int, grant_id: str, period: str
    ) -> Balance:
        """Add a grant the ledger already holds (once, however often it is called)."""
        key = account_key(organization_id, period)
        return await self._account(
            organization_id,
            period,
            allowance,
            lambda: self._scripts.grant(key, amount=amount, grant_id=grant_id),
        )

    async def balance(self, organization_id: str, *, allowance: int) -> Balance:
        period = self._periods.of()
        key = account_key(organization_id, period)
        return await self._account(
            organization_id, period, allowance, lambda: self._scripts.state(key)
        )

    async def thresholds(self, organization_id: str, period: str, balance: Balance) -> None:
        """Record each threshold (80, 95, 100 %) the balance has crossed, once per month."""
        if self._on_threshold is None:
            return
        consumed = balance.consumed_percent() if balance.remaining > 0 else 100.0
        for threshold in THRESHOLDS:
            marker = (organization_id, period, threshold)
            if consumed >= threshold and marker not in self._notified:
                await self._on_threshold(organization_id, period, threshold, balance)
                self._notified.add(marker)  # once it is recorded (recording is idempotent)
