"""The credit account in Redis is a cache of the MongoDB ledger, and no replica hoards it.

- A Redis that lost its data (a non-persistent redis-server killed with SIGKILL and
  started again, empty) is refilled from the ledger, never from the allowance; two
  replicas rebuilding at once count once; debits recorded before the loss are not
  counted twice, and debits made around it are counted once.
- A reservation is a small share of what is left; near exhaustion replicas hand back
  what they hold, a refusal while others hold credits says "retry in seconds", and a
  replica that stopped talking to Redis holds nothing after a while.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.backends import Backends
from storage.core.errors import ResourceExhaustedError
from storage.metering.credits import LedgerTotals
from tests.support.metering import Meter, new_organization_id
from tests.support.processes import RedisServer


@pytest.fixture
async def lossy_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of its own, without persistence, for the test to kill."""
    server = RedisServer.on_free_port(tmp_path)
    server.start()
    yield server
    server.stop()


async def restart_empty(server: RedisServer, redis: Redis) -> None:
    """SIGKILL (nothing saved) and start again; the client's pooled connections broke
    with the old process and are dropped (a server would see one failed call on each)."""
    server.kill()
    server.start()
    await redis.connection_pool.disconnect()


async def refused(meter: Meter, organization_id: str, allowance: int) -> ResourceExhaustedError:
    try:
        await meter.spend(organization_id, 1, allowance=allowance)
    except ResourceExhaustedError as exc:
        return exc
    raise AssertionError("a credit was granted that the organization does not have")


async def test_a_redis_that_lost_its_data_is_refilled_from_the_ledger(
    lossy_redis: RedisServer, backends: Backends
) -> None:
    """100 of 100 credits used and recorded; Redis killed and restarted empty: the
    organization still has nothing left (before: the month started again, 100 more)."""
    redis = Redis.from_url(lossy_redis.url)
    organization = new_organization_id()
    meter = Meter.of(redis, backends.mongo, f"lossy-{organization}")
    for _ in range(100):
        await meter.spend(organization, 1, allowance=100)
    await meter.flush(everything=True)
    await restart_empty(lossy_redis, redis)
    exhausted = await refused(meter, organization, 100)
    assert exhausted.retry_after_s is not None and exhausted.retry_after_s > 60  # month end
    balance = await meter.accounts.balance(organization, allowance=100)
    assert (balance.used, balance.remaining, balance.reserved) == (100, 0, 0)
    await redis.aclose()


async def test_replicas_rebuilding_at_once_count_once(
    lossy_redis: RedisServer, backends: Backends
) -> None:
    """Both replicas read the ledger before either writes the account: the first write
    wins, the second changes nothing."""
    redis = Redis.from_url(lossy_redis.url)
    organization = new_organization_id()
    first = Meter.of(redis, backends.mongo, f"one-{organization}")
    for _ in range(30):
        await first.spend(organization, 1, allowance=100)
    await first.flush(everything=True)
    await restart_empty(lossy_redis, redis)
    both_read = asyncio.Barrier(2)

    class ReadTogether:
        """The real ledger; a reader waits until the other one has read too."""

        def __init__(self, meter: Meter) -> None:
            self._ledger = meter.accounts.ledger

        async def totals(self, organization_id: str, period: str) -> LedgerTotals:
            totals = await self._ledger.totals(organization_id, period)
            await both_read.wait()
            return totals

    meters = [first, Meter.of(redis, backends.mongo, f"two-{organization}")]
    for meter in meters:
        meter.accounts.ledger = ReadTogether(meter)
    period = first.accounts.current_period()
    created = await asyncio.gather(
        *(m.accounts.rebuild(organization, period, allowance=100) for m in meters)
    )
    assert sorted(created) == [False, True]
    balance = await first.accounts.balance(organization, allowance=100)
    assert (balance.used, balance.remaining, balance.reserved) == (30, 70, 0)
    await redis.aclose()


async def test_debits_around_a_loss_are_counted_once(
    lossy_redis: RedisServer, backends: Backends
) -> None:
    """20 credits settled; 10 in the ledger but not settled yet; 5 spent but not in the
    ledger yet; a reservation unspent. Redis loses its data. The rebuild counts the 30 of
    the ledger; the next settle counts the 5 (and not the 10 again); what the replica
    held unspent is forgotten, so nobody spends it twice."""
    redis = Redis.from_url(lossy_redis.url)
    organization = new_organization_id()
    meter = Meter.of(redis, backends.mongo, f"around-{organization}")
    for _ in range(20):
        await meter.spend(organization, 1, allowance=1000)
    await meter.flush()
    for _ in range(10):
        await meter.spend(organization, 1, allowance=1000)
    await meter.usage.flush()  # in the ledger, not settled
    for _ in range(5):
        await meter.spend(organization, 1, allowance=1000)  # not in the ledger
    await restart_empty(lossy_redis, redis)
    await meter.flush()
    balance = await meter.accounts.balance(organization, allowance=1000)
    assert (balance.used, balance.reserved, balance.remaining) == (35, 0, 965)
    assert not meter.accounts.try_debit(organization, 1)  # the old reservation is gone
    await meter.spend(organization, 1, allowance=1000)
    await meter.flush(everything=True)
    balance = await meter.accounts.balance(organization, allowance=1000)
    assert (balance.used, balance.reserved, balance.remaining) == (36, 0, 964)
    assert await meter.usage.ledger_total(organization, balance.period) == 36
    await redis.aclose()


async def test_reservations_are_a_small_share_of_what_is_left(
    lossy_redis: RedisServer, backends: Backends
) -> None:
    redis = Redis.from_url(lossy_redis.url)
    organization = new_organization_id()
    meters = [Meter.of(redis, backends.mongo, f"share{i}-{organization}") for i in range(3)]
    for meter in meters:
        await meter.spend(organization, 1, allowance=100)
    balance = await meters[0].accounts.balance(organization, allowance=100)
    # each took at most 1/16 of what was left when it asked (100, 94, 89)
    assert balance.reserved <= 6 + 5 + 5, balance
    await redis.aclose()


async def test_credits_held_elsewhere_come_back_within_seconds(
    lossy_redis: RedisServer, backends: Backends
) -> None:
    """One replica holds part of the last credits; another is refused with "retry in
    seconds" (not month-end); the holder hands them back at its next settle and every
    credit gets spent, never one more."""
    redis = Redis.from_url(lossy_redis.url)
    organization = new_organization_id()
    holder, spender = (
        Meter.of(redis, backends.mongo, f"{name}-{organization}") for name in ("holder", "spender")
    )
    await holder.spend(organization, 1, allowance=100)
    spent = 1
    while True:
        try:
            await spender.spend(organization, 1, allowance=100)
            spent += 1
        except ResourceExhaustedError as exc:
            soon = exc
            break
    assert soon.retry_after_s is not None and soon.retry_after_s <= 5, soon.message
    assert "retry in" in soon.message
    await holder.flush()  # the holder's settle: someone was short, so it hands back
    while True:
        try:
            await spender.spend(organization, 1, allowance=100)
            spent += 1
        except ResourceExhaustedError as exc:
            final = exc
            break
    assert spent == 100
    assert final.retry_after_s is not None and final.retry_after_s > 60  # month end now
    await redis.aclose()


async def test_a_replica_that_went_silent_holds_nothing(
    lossy_redis: RedisServer, backends: Backends
) -> None:
    """A replica reserved and then died (it never settles again): once it has been silent
    for `dead_after_s`, a replica short of credits reclaims its reservation."""
    redis = Redis.from_url(lossy_redis.url)
    organization = new_organization_id()
    gone = Meter.of(redis, backends.mongo, f"gone-{organization}")
    alive = Meter.of(redis, backends.mongo, f"alive-{organization}", dead_after_s=0.3)
    await gone.spend(organization, 1, allowance=50)
    await gone.flush()  # its spent credit is settled, its reservation stays
    spent = 1
    with pytest.raises(ResourceExhaustedError):
        while True:
            await alive.spend(organization, 1, allowance=50)
            spent += 1
    await asyncio.sleep(0.5)
    with pytest.raises(ResourceExhaustedError):
        while True:
            await alive.spend(organization, 1, allowance=50)
            spent += 1
    assert spent == 50
    await redis.aclose()
