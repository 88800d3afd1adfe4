"""Credits: a monthly allowance per organization, debited atomically, never below zero.

The balance of the current period lives in Redis (`mg:{org_…}:credits:<YYYY-MM>`,
a hash of allowance, granted, balance, used, reserved). A period's hash is
created by the first script that touches it, with the plan's allowance: the
monthly refill is lazy, computed from the clock, no cron job.

A replica reserves credits in batches (one Lua script: the balance moves to
`reserved`, never below zero) and debits calls from its local reservation,
so the common call pays no Redis round trip. A batch starts at 20 calls'
worth, doubles while top-ups follow each other within a second (busy
organizations) up to 1 % of the allowance (at most `max_batch`), and the next
batch is fetched when a quarter of the current one is left. A debit is held
while its call runs; when the call finishes it is either spent (and becomes a
usage event, the ledger) or refunded (server-side failure). Every second the
replica settles what was spent *and recorded* before the ledger flush (a
snapshot taken before it): those credits move from `reserved` to `used`;
reservations idle for a while go back to the balance. So at any quiet moment
`allowance + granted == balance + reserved + used` and `used` equals the sum
of the ledger's credits for the period.

A call whose cost exceeds what can be reserved is RESOURCE_EXHAUSTED before
any work is done. Redis unreachable: credits fail closed (UNAVAILABLE) unless
configured open; calls already covered by a local reservation go through.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError

from storage.backends.redis_client import RedisClient
from storage.backends.redis_keys import organization_key
from storage.backends.tracing import client_span
from storage.core.errors import ResourceExhaustedError, UnavailableError

__all__ = ["THRESHOLDS", "Balance", "CreditAccounts", "period_of"]

_LOG = logging.getLogger("meshgate.credits")
THRESHOLDS = (80, 95, 100)
_PERIOD_TTL_MS = 70 * 24 * 3600 * 1000

_INIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'allowance', ARGV[1], 'granted', 0, 'balance', ARGV[1],
             'used', 0, 'reserved', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
"""
_STATE = (
    "return redis.call('HMGET', KEYS[1], 'allowance', 'granted', 'balance', 'used', 'reserved')"
)
# ARGV: allowance, ttl_ms, want, replica
_RESERVE = (
    _INIT
    + """
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance'))
local grant = math.min(tonumber(ARGV[3]), balance)
if grant > 0 then
  redis.call('HINCRBY', KEYS[1], 'balance', -grant)
  redis.call('HINCRBY', KEYS[1], 'reserved', grant)
  redis.call('HINCRBY', KEYS[1], 'res:' .. ARGV[4], grant)
end
local s = redis.call('HMGET', KEYS[1], 'allowance', 'granted', 'balance', 'used', 'reserved')
return {grant, s[1], s[2], s[3], s[4], s[5]}
"""
)
# ARGV: allowance, ttl_ms, used, release, replica
_SETTLE = (
    _INIT
    + """
local used = tonumber(ARGV[3])
local release = tonumber(ARGV[4])
redis.call('HINCRBY', KEYS[1], 'used', used)
redis.call('HINCRBY', KEYS[1], 'reserved', -(used + release))
redis.call('HINCRBY', KEYS[1], 'balance', release)
redis.call('HINCRBY', KEYS[1], 'res:' .. ARGV[5], -(used + release))
"""
    + _STATE
)
# ARGV: allowance, ttl_ms, amount
_GRANT = (
    _INIT
    + """
redis.call('HINCRBY', KEYS[1], 'granted', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[3])
"""
    + _STATE
)


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_end(period: str) -> datetime:
    year, month = (int(p) for p in period.split("-"))
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, last, 23, 59, 59, tzinfo=UTC)


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


def _balance(period: str, raw: list[object]) -> Balance:
    allowance, granted, remaining, used, reserved = (int(v) for v in raw)  # type: ignore[call-overload]
    return Balance(period, allowance, granted, remaining, used, reserved)


@dataclass
class _Reservation:
    allowance: int
    available: int = 0
    held: int = 0  # debited by calls still running
    spent: int = 0  # debited by finished calls, not settled yet
    last_used: float = 0.0
    size: int = 0  # the last batch asked for
    topped_up_at: float = float("-inf")
    # the top-up in flight; its result is its failure (None: it reached Redis)
    pending: asyncio.Task[BaseException | None] | None = None


@dataclass
class CreditAccounts:
    redis: RedisClient
    replica: str
    fail_open: bool = False
    timeout_s: float = 0.5
    batch: int = 100
    max_batch: int = 1000
    growth_window_s: float = 1.0
    idle_release_s: float = 2.0
    clock: Callable[[], float] = time.time  # wall clock, epoch seconds
    monotonic: Callable[[], float] = time.monotonic
    on_threshold: Callable[[str, str, int, Balance], Awaitable[None]] | None = None
    _reservations: dict[tuple[str, str], _Reservation] = field(default_factory=dict)
    # threshold recordings started by top-ups (they never hold up a debit)
    _recording: set[asyncio.Task[None]] = field(default_factory=set)
    _notified: set[tuple[str, str, int]] = field(default_factory=set)
    _current: str = ""
    _current_from: float = float("inf")
    _current_until: float = float("-inf")

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _period(self, at: float | None = None) -> str:
        """The period of `at` (default: now), recomputed only when it leaves the cached one."""
        now = self.clock() if at is None else at
        if not self._current_from <= now < self._current_until:
            moment = datetime.fromtimestamp(now, UTC)
            self._current = period_of(moment)
            start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            self._current_from = start.timestamp()
            self._current_until = (period_end(self._current) + timedelta(seconds=1)).timestamp()
        return self._current

    def __post_init__(self) -> None:
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._grant = self.redis.register_script(_GRANT)
        self._state = self.redis.register_script(_INIT + _STATE)

    @staticmethod
    def key(organization_id: str, period: str) -> str:
        return organization_key(organization_id, "credits", period)

    def try_debit(self, organization_id: str, cost: int, *, at: float | None = None) -> bool:
        """Debit from this replica's reservation without waiting; False: call `debit`.

        `at` (epoch seconds, default now) is when the call started: its credits belong
        to that moment's period, however long it runs (give `complete` the same).
        """
        period = self._period(at)
        reservation = self._reservations.get((organization_id, period))
        return reservation is not None and self._take(organization_id, period, reservation, cost)

    def _take(
        self, organization_id: str, period: str, reservation: _Reservation, cost: int
    ) -> bool:
        """`cost` from the reservation if it holds that much; the next batch is fetched
        before it runs dry."""
        if reservation.available < cost:
            return False
        reservation.available -= cost
        reservation.held += cost
        reservation.last_used = self.monotonic()
        if reservation.available < reservation.size // 4 and reservation.pending is None:
            self._start_top_up(organization_id, period, reservation, cost)
        return True

    async def debit(
        self, organization_id: str, cost: int, *, allowance: int, at: float | None = None
    ) -> None:
        """Spend `cost` credits now, or raise before any work is done.

        `allowance` is the plan's monthly credits, used when the period starts; `at` as
        for `try_debit`.
        """
        period = self._period(at)
        slot = (organization_id, period)
        reservation = self._reservations.get(slot)
        if reservation is None:
            reservation = self._reservations[slot] = _Reservation(allowance=allowance)
        for _ in range(2):
            if self._take(organization_id, period, reservation, cost):
                return
            if reservation.pending is None:
                self._start_top_up(organization_id, period, reservation, cost)
            assert reservation.pending is not None
            # every waiter judges by the top-up it waited for, not by shared state
            error = await asyncio.shield(reservation.pending)
            if error is not None:
                if self.fail_open:
                    _LOG.warning("credits unavailable (%s): failing open", type(error).__name__)
                    return
                raise UnavailableError("credit accounting is unavailable; retry later")
        end = period_end(period)
        raise ResourceExhaustedError(
            "the organization's credits for this month are used up",
            retry_after_s=max(1.0, (end - self.now()).total_seconds()),
        )

    def _start_top_up(
        self, organization_id: str, period: str, reservation: _Reservation, cost: int
    ) -> None:
        now = self.monotonic()
        base = min(self.batch, cost * 20)
        if now - reservation.topped_up_at < self.growth_window_s:
            ceiling = max(base, min(self.max_batch, reservation.allowance // 100))
            reservation.size = min(ceiling, max(base, reservation.size * 2))
        else:
            reservation.size = base
        reservation.topped_up_at = now
        want = max(cost - reservation.available, reservation.size)
        reservation.pending = asyncio.create_task(
            self._top_up(organization_id, period, reservation, want)
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
        self, organization_id: str, period: str, reservation: _Reservation, want: int
    ) -> BaseException | None:
        try:
            with client_span("redis", "EVALSHA", **{"meshgate.script": "credits_reserve"}):
                raw = await asyncio.wait_for(
                    self._reserve(
                        keys=[self.key(organization_id, period)],
                        args=[reservation.allowance, _PERIOD_TTL_MS, want, self.replica],
                    ),
                    self.timeout_s,
                )
            reservation.available += int(raw[0])
        except (RedisError, OSError, TimeoutError) as exc:
            return exc
        finally:
            reservation.pending = None
        task = asyncio.create_task(self._record(organization_id, period, raw[1:]))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return None

    async def _record(self, organization_id: str, period: str, raw: list[object]) -> None:
        try:
            await self._thresholds(organization_id, period, _balance(period, raw))
        except Exception as exc:  # the next top-up or settle records it instead
            _LOG.warning("could not record a credit threshold: %s", type(exc).__name__)

    def complete(
        self, organization_id: str, cost: int, *, refund: bool, at: float | None = None
    ) -> None:
        """The call holding `cost` finished: spent (record its usage event first) or refunded.

        `at` is the `at` of its debit, so a call that ran across a month boundary is
        settled in the month it was debited in (and its usage event recorded there).
        """
        reservation = self._reservations.get((organization_id, self._period(at)))
        if reservation is None or reservation.held < cost:
            _LOG.error("credits completed that were never debited (%s)", organization_id)
            return
        reservation.held -= cost
        if refund:
            reservation.available += cost
        else:
            reservation.spent += cost

    def spent_snapshot(self) -> dict[tuple[str, str], int]:
        """What is spent now; take it before flushing the ledger, then `settle(spent=...)`."""
        return {slot: r.spent for slot, r in self._reservations.items() if r.spent}

    async def settle(
        self, *, spent: dict[tuple[str, str], int] | None = None, everything: bool = False
    ) -> None:
        """Move `spent` (a snapshot whose usage events are stored) to `used`; release idle
        reservations back to the balance (all of them with `everything`, at shutdown)."""
        now = self.monotonic()
        snapshot = self.spent_snapshot() if spent is None else spent
        for slot, reservation in list(self._reservations.items()):
            organization_id, period = slot
            stale = period != self._period()
            release = (
                reservation.available
                if everything or stale or now - reservation.last_used > self.idle_release_s
                else 0
            )
            spent_now = min(snapshot.get(slot, 0), reservation.spent)
            if not spent_now and not release:
                continue
            raw = await asyncio.wait_for(
                self._settle(
                    keys=[self.key(organization_id, period)],
                    args=[reservation.allowance, _PERIOD_TTL_MS, spent_now, release, self.replica],
                ),
                self.timeout_s,
            )
            reservation.spent -= spent_now
            reservation.available -= release
            if stale and not (reservation.spent or reservation.available or reservation.held):
                self._reservations.pop(slot, None)
            await self._thresholds(organization_id, period, _balance(period, raw))

    async def grant(self, organization_id: str, amount: int, *, allowance: int) -> Balance:
        period = self._period()
        raw = await self._grant(
            keys=[self.key(organization_id, period)], args=[allowance, _PERIOD_TTL_MS, amount]
        )
        return _balance(period, raw)

    async def balance(self, organization_id: str, *, allowance: int) -> Balance:
        period = self._period()
        raw = await self._state(
            keys=[self.key(organization_id, period)], args=[allowance, _PERIOD_TTL_MS]
        )
        return _balance(period, raw)

    async def _thresholds(self, organization_id: str, period: str, balance: Balance) -> None:
        if self.on_threshold is None:
            return
        consumed = balance.consumed_percent() if balance.remaining > 0 else 100.0
        for threshold in THRESHOLDS:
            marker = (organization_id, period, threshold)
            if consumed >= threshold and marker not in self._notified:
                await self.on_threshold(organization_id, period, threshold, balance)
                self._notified.add(marker)  # once it is recorded (recording is idempotent)
