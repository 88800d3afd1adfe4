"""Credits: a monthly allowance per organization, debited before a call runs.

The MongoDB ledger is the truth: the usage documents (storage/metering/usage.py)
carry the credits every finished call was charged, and grants are recorded in
`credit_events`. Redis holds a cache of the period's account
(storage/metering/credit_scripts.py): when it is missing (a new month, or a
Redis that lost its data) it is rebuilt from the ledger, allowance minus used
plus grants, before anything is granted from it.

A replica reserves credits with one Lua script and debits calls from its local
reservation, so the common call pays no Redis round trip. A reservation is at
most `1/share` of the balance left in Redis (but always enough for the call
that asked), so a small allowance is never parked in one replica: near
exhaustion replicas reserve exactly what the waiting calls cost, one round trip
per call. A debit is held while its call runs; the call then either spends it
(its usage event is the ledger entry) or is refunded (a server-side failure).

Every second (`settle`) the replica moves the credits the ledger has recorded
from `reserved` to `used`, and hands back what it holds unspent when it has
been idle, when the balance left is smaller than what it holds, or when a
reservation was refused in the last seconds (some replica is short); it also
hands back what Redis says it holds but it never heard of (a reply lost to a
timeout), and forgets what it holds but Redis no longer knows (Redis lost its
data). A refusal while other replicas still hold credits says "retry in
seconds", not "wait for next month".

What a Redis data loss can cost: debits not yet in the ledger when the account
is rebuilt (at most one flush interval of calls, plus calls still running) are
counted again when their usage is recorded, and replicas may spend what they
held for up to one settle interval before they notice; the balance may then go
below zero by that much, never more.

Here: the call path (`CreditAccounts`: reserve, debit, complete). The settlement and the
rebuild: storage/metering/credit_settlement.py; the values (balances, periods, a
replica's reservation): storage/metering/credit_balances.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.exceptions import RedisError

from storage.backends.deadlines import within
from storage.backends.redis_client import RedisClient
from storage.backends.tracing import client_span
from storage.core.errors import Quota, Reason, ResourceExhaustedError, UnavailableError
from storage.metering.credit_balances import (
    THRESHOLDS,
    Balance,
    CreditPeriods,
    Ledger,
    LedgerBatch,
    LedgerTotals,
    Reservation,
    TopUp,
    account_key,
    account_keys,
    balance_of,
    period_end,
    period_of,
)
from storage.metering.credit_scripts import CreditScripts, ReserveReply
from storage.metering.credit_settlement import CreditSettlement, ThresholdRecorder

# the value types are credit_balances'; re-exported, as the package's face for credits
__all__ = ["THRESHOLDS", "Balance", "CreditAccounts", "Ledger", "LedgerBatch", "LedgerTotals"]
__all__ += ["period_end", "period_of"]

_LOG = logging.getLogger("meshgate.credits")


@dataclass
class CreditAccounts:
    """One replica's credit accounts: the call path here (reserve, debit, complete), the
    settlement beside it (storage/metering/credit_settlement.py), both on one table of
    reservations."""

    redis: RedisClient
    replica: str
    ledger: Ledger
    fail_open: bool = False
    timeout_s: float = 0.5  # for one script
    # for rebuilding an account from the ledger (it reads MongoDB; once a month, or after
    # Redis lost its data)
    rebuild_timeout_s: float = 5.0
    batch: int = 100
    max_batch: int = 1000
    growth_window_s: float = 1.0
    idle_release_s: float = 2.0
    # a reservation takes at most 1/share of the balance left (more only for waiting calls)
    share: int = 16
    # how often `settle` runs (the server's usage flush); refusals say when to retry from it
    settle_interval_s: float = 1.0
    # a replica that ran no script on an account for this long holds nothing in it
    dead_after_s: float = 10.0
    clock: Callable[[], float] = time.time  # wall clock, epoch seconds
    monotonic: Callable[[], float] = time.monotonic
    on_threshold: ThresholdRecorder | None = None
    # (organization_id, period) -> what this replica holds of that account
    _reservations: dict[tuple[str, str], Reservation] = field(default_factory=dict)
    # threshold recordings started by top-ups (they never hold up a debit)
    _recording: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._scripts = CreditScripts(self.redis)
        self._periods = CreditPeriods(self.clock)
        self._settlement = CreditSettlement(
            scripts=self._scripts,
            ledger=self.ledger,
            replica=self.replica,
            reservations=self._reservations,
            periods=self._periods,
            timeout_s=self.timeout_s,
            rebuild_timeout_s=self.rebuild_timeout_s,
            idle_release_s=self.idle_release_s,
            settle_interval_s=self.settle_interval_s,
            monotonic=self.monotonic,
            on_threshold=self.on_threshold,
        )

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def current_period(self) -> str:
        return self._periods.of()

    @staticmethod
    def key(organization_id: str, period: str) -> str:
        return account_key(organization_id, period)

    # -- the call path ------------------------------------------------------------------

    def try_debit(self, organization_id: str, cost: int, *, at: float | None = None) -> bool:
        """Debit from this replica's reservation without waiting; False: call `debit`.

        `at` (epoch seconds, default now) is when the call started: its credits belong
        to that moment's period, however long it runs (give `complete` the same).
        """
        period = self._periods.of(at)
        reservation = self._reservations.get((organization_id, period))
        return reservation is not None and self._take(organization_id, period, reservation, cost)

    def _take(self, organization_id: str, period: str, reservation: Reservation, cost: int) -> bool:
        """`cost` from the reservation if it holds that much; the next batch is fetched
        before it runs dry."""
        if reservation.available < cost:
            return False
        reservation.available -= cost
        reservation.held += cost
        reservation.last_used = self.monotonic()
        if reservation.available < reservation.size // 4 and reservation.pending is None:
            self._start_top_up(organization_id, period, reservation, cost=cost, need=0)
        return True

    async def debit(
        self, organization_id: str, cost: int, *, allowance: int, at: float | None = None
    ) -> None:
        """Spend `cost` credits now, or raise before any work is done.

        `allowance` is the plan's monthly credits, used when the period's account is
        created; `at` as for `try_debit`.
        """
        period = self._periods.of(at)
        slot = (organization_id, period)
        reservation = self._reservations.get(slot)
        if reservation is None:
            reservation = self._reservations[slot] = Reservation(allowance=allowance)
        if self._take(organization_id, period, reservation, cost):
            return
        reservation.waiting += cost
        try:
            outcome = TopUp()
            for _ in range(8):
                if reservation.pending is None:
                    self._start_top_up(
                        organization_id,
                        period,
                        reservation,
                        cost=cost,
                        need=cost - reservation.available,
                    )
                assert reservation.pending is not None
                # every waiter judges by the top-up it waited for, not by shared state
                outcome = await asyncio.shield(reservation.pending)
                if outcome.error is not None:
                    if self.fail_open:
                        _LOG.warning(
                            "credits unavailable (%s): failing open", type(outcome.error).__name__
                        )
                        return
                    raise UnavailableError("credit accounting is unavailable; retry later")
                if self._take(organization_id, period, reservation, cost):
                    return
                if outcome.granted == 0 and 0 < outcome.need <= cost - reservation.available:
                    break  # Redis cannot cover even this call
        finally:
            reservation.waiting -= cost
        raise self._refusal(period, outcome)

    def _refusal(self, period: str, outcome: TopUp) -> ResourceExhaustedError:
        quota = Quota(
            subject=f"credits:{period}",
            description=f"the organization's credits for {period} (allowance and grants)",
        )
        if outcome.others_hold > 0 or outcome.granted > 0:
            # other replicas hand back what they hold within a settle interval or two
            delay = 2 * self.settle_interval_s
            return ResourceExhaustedError(
                "the organization's remaining credits are reserved by other replicas;"
                f" retry in {delay:g}s",
                retry_after_s=delay,
                reason=Reason.CREDITS_EXHAUSTED,
                quota=quota,
                metadata={"period": period},
            )
        end = period_end(period)
        return ResourceExhaustedError(
            "the organization's credits for this month are used up",
            retry_after_s=max(1.0, (end - self.now()).total_seconds()),
            reason=Reason.CREDITS_EXHAUSTED,
            quota=quota,
            metadata={"period": period},
        )

    def _start_top_up(
        self,
        organization_id: str,
        period: str,
        reservation: Reservation,
        *,
        cost: int,
        need: int,
    ) -> None:
        """A reservation script for `need` credits at least (0: a prefetch), more for the
        calls waiting, and a batch of 20 such calls (growing while busy) if Redis has it
        to spare."""
        now = self.monotonic()
        base = min(self.batch, cost * 20)
        if now - reservation.topped_up_at < self.growth_window_s:
            ceiling = max(base, min(self.max_batch, reservation.allowance // 100))
            reservation.size = min(ceiling, max(base, reservation.size * 2))
        else:
            reservation.size = base
        reservation.topped_up_at = now
        demand = max(need, reservation.waiting - reservation.available)
        want = max(demand, reservation.size - reservation.available)
        reservation.pending = asyncio.create_task(
            self._top_up(organization_id, period, reservation, need=need, demand=demand, want=want)
        )

    def top_up_in_flight(self) -> bool:
        """Whether a top-up is on its way to Redis (what `drain` waits for)."""
        return any(r.pending is not None for r in self._reservations.values())

    async def drain(self) -> None:
        """Wait for the top-ups in flight (before the final settle at shutdown, so that
        none lands afterwards and leaves credits reserved for a replica that is gone),
        and for the threshold recordings they started."""
        pending = [r.pending for r in self._reservations.values() if r.pending is not None]
        await asyncio.gather(*pending, *self._recording, return_exceptions=True)

    async def _top_up(
        self,
        organization_id: str,
        period: str,
        reservation: Reservation,
        *,
        need: int,
        demand: int,
        want: int,
    ) -> TopUp:
        try:
            with client_span("redis", "EVALSHA", **{"meshgate.script": "credits_reserve"}):
                reply = await self._reserve(
                    organization_id, period, reservation, need=need, demand=demand, want=want
                )
        except (RedisError, OSError, TimeoutError) as exc:
            return TopUp(error=exc)
        except Exception as exc:  # the ledger could not be read to rebuild the account
            _LOG.warning("could not reserve credits: %s", type(exc).__name__)
            return TopUp(error=exc)
        finally:
            reservation.pending = None
        reservation.available += reply.granted
        if reply.granted < want:  # capped near exhaustion: no prefetching until it grows
            reservation.size = min(reservation.size, reply.granted)
        task = asyncio.create_task(
            self._record(organization_id, period, balance_of(period, reply.state))
        )
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return TopUp(
            granted=reply.granted,
            need=need,
            others_hold=reply.state.reserved - reply.mine,
        )

    async def _reserve(
        self,
        organization_id: str,
        period: str,
        reservation: Reservation,
        *,
        need: int,
        demand: int,
        want: int,
    ) -> ReserveReply:
        """The reservation script (waiting first for a settle of this account in flight),
        within `timeout_s`; if the account must be rebuilt, the rebuild (it reads MongoDB)
        within `rebuild_timeout_s`, and the script once more."""
        keys = account_keys(organization_id, period)

        async def reserve() -> ReserveReply | None:
            if reservation.settling is not None:
                await reservation.settling.wait()
            return await self._scripts.reserve(
                keys,
                replica=self.replica,
                need=need,
                demand=demand,
                want=want,
                share=self.share,
                dead_ms=int(self.dead_after_s * 1000),
            )

        for _ in range(2):
            reply = await within(reserve(), self.timeout_s)
            if reply is not None:
                return reply
            await within(
                self._settlement.rebuild(organization_id, period, allowance=reservation.allowance),
                self.rebuild_timeout_s,
            )
        raise RedisError("the credit account vanished while it was being rebuilt")

    async def _record(self, organization_id: str, period: str, balance: Balance) -> None:
        try:
            await self._settlement.thresholds(organization_id, period, balance)
        except Exception as exc:  # the next top-up or settle records it instead
            _LOG.warning("could not record a credit threshold: %s", type(exc).__name__)

    def complete(
        self, organization_id: str, cost: int, *, refund: bool, at: float | None = None
    ) -> None:
        """The call holding `cost` finished: spent (record its usage event too) or refunded.

        `at` is the `at` of its debit, so a call that ran across a month boundary is
        settled in the month it was debited in (and its usage event recorded there).
        """
        reservation = self._reservations.get((organization_id, self._periods.of(at)))
        if reservation is None or reservation.held < cost:
            _LOG.error("credits completed that were never debited (%s)", organization_id)
            return
        reservation.held -= cost
        if refund:
            reservation.available += cost
        else:
            reservation.spent += cost

    # -- the settlement (storage/metering/credit_settlement.py) -------------------------

    def recorded(self, batch: LedgerBatch) -> None:
        """The usage writer stored `batch`: its credits are in the ledger now, to be
        settled (the writer calls this after every batch it stores)."""
        self._settlement.recorded(batch)

    async def settle(self, *, everything: bool = False) -> None:
        """Move what the ledger recorded to `used`, hand back what is idle or wanted
        elsewhere (all of it with `everything`, at shutdown), and reconcile what this
        replica holds with what Redis says it holds. One settle at a time."""
        await self._settlement.settle(everything=everything)

    async def rebuild(self, organization_id: str, period: str, *, allowance: int) -> bool:
        """Create the period's account from the ledger unless it exists; True if this call
        created it. Replicas rebuilding at once count once: the first write wins."""
        return await self._settlement.rebuild(organization_id, period, allowance=allowance)

    async def grant(
        self, organization_id: str, amount: int, *, allowance: int, grant_id: str, period: str
    ) -> Balance:
        """Add a grant the ledger already holds (once, however often it is called)."""
        return await self._settlement.grant(
            organization_id, amount, allowance=allowance, grant_id=grant_id, period=period
        )

    async def balance(self, organization_id: str, *, allowance: int) -> Balance:
        return await self._settlement.balance(organization_id, allowance=allowance)
