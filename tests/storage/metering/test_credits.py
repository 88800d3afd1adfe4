"""Credits against a real redis-server and a Redis Cluster: never negative, ledger ==
balance, lazy monthly refill."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio.cluster import RedisCluster

from server.backends import Backends, open_redis
from storage.backends.redis_client import RedisClient
from storage.core.errors import ResourceExhaustedError
from storage.metering.credits import CreditAccounts, period_of
from tests.support.metering import Meter
from tests.support.metering import new_organization_id as org
from tests.support.processes import free_port
from tests.support.redis_cluster import RedisEndpoint


async def test_concurrent_debits_never_overdraw_and_reconcile(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    redis = await redis_endpoint.connect()
    organization = org()
    replicas = [
        Meter.of(redis, backends.mongo, f"r{i}-{organization}", batch=7, record_thresholds=True)
        for i in range(3)
    ]
    allowance = 500
    admitted = refused = 0

    async def caller(i: int) -> None:
        nonlocal admitted, refused
        meter = replicas[i % 3]
        for n in range(60):
            cost = 1 + (n % 3)
            try:
                await meter.accounts.debit(organization, cost, allowance=allowance)
            except ResourceExhaustedError:
                refused += 1
                continue
            admitted += cost
            meter.finish(organization, cost)
            if n % 10 == 0:
                await meter.flush()

    await asyncio.gather(*(caller(i) for i in range(12)))
    for meter in replicas:
        await meter.flush(everything=True)
    accounts, usage = replicas[0].accounts, replicas[0].usage
    balance = await accounts.balance(organization, allowance=allowance)
    print(f"\ncredits: {admitted} spent of {allowance}, {refused} calls refused")
    assert balance.remaining >= 0 and balance.reserved == 0
    assert admitted <= allowance and refused > 0
    assert balance.used == admitted  # every admitted credit settled
    assert balance.remaining + balance.used == allowance  # nothing lost, nothing invented
    assert await usage.ledger_total(organization, balance.period) == balance.used
    assert await replicas[0].events.thresholds(organization, balance.period) == [80, 95, 100]
    await redis.aclose()


async def test_grants_add_to_the_current_period(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    redis = await redis_endpoint.connect()
    meter = Meter.of(redis, backends.mongo, "g")
    accounts, organization = meter.accounts, org()
    before = await accounts.balance(organization, allowance=10)
    period = accounts.current_period()
    grant_id = await meter.events.record_grant(organization, period, 15, by="test")
    after = await accounts.grant(organization, 15, allowance=10, grant_id=grant_id, period=period)
    again = await accounts.grant(
        organization, 15, allowance=10, grant_id=grant_id, period=period
    )  # a retried grant adds nothing
    assert (before.remaining, after.remaining, after.granted, after.total) == (10, 25, 15, 25)
    assert again == after
    await redis.aclose()


async def test_monthly_refill_is_lazy(redis_endpoint: RedisEndpoint, backends: Backends) -> None:
    """The clock crosses a month boundary: the new period starts with the plan's allowance."""
    redis = await redis_endpoint.connect()
    clock = [datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)]

    def wall_clock() -> float:
        return clock[0].timestamp()

    organization = org()
    meter = Meter.of(redis, backends.mongo, f"c-{organization}", clock=wall_clock, batch=5)
    accounts = meter.accounts
    for _ in range(5):
        await meter.spend(organization, 1, allowance=5)
    try:
        await accounts.debit(organization, 1, allowance=5)
        raise AssertionError("the sixth credit of a 5-credit month was granted")
    except ResourceExhaustedError as exc:
        assert exc.retry_after_s is not None and exc.retry_after_s <= 1.0 + 1e-6
    await meter.flush(everything=True)
    november = await accounts.balance(organization, allowance=5)
    clock[0] = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    await meter.spend(organization, 1, allowance=5)
    await meter.flush(everything=True)
    december = await accounts.balance(organization, allowance=5)
    assert (november.period, november.used, november.remaining) == ("2026-11", 5, 0)
    assert (december.period, december.used, december.remaining) == ("2026-12", 1, 4)
    await redis.aclose()


async def _script_calls(redis: RedisClient, key: str) -> int:
    """Scripts run by the Redis node holding `key` (on a cluster, the node owning its slot)."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        stats = await redis.info("commandstats", target_nodes=redis.get_node_from_key(key))
    else:
        stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def test_busy_organizations_reserve_in_growing_batches(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    redis = await redis_endpoint.connect()
    organization, allowance = org(), 1_000_000
    meter = Meter.of(redis, backends.mongo, f"busy-{organization}")
    key = CreditAccounts.key(organization, period_of(meter.accounts.now()))
    before = await _script_calls(redis, key)
    for _ in range(5_000):
        await meter.spend(organization, 1, allowance=allowance)
    scripts = await _script_calls(redis, key) - before
    print(f"\n5000 debits of 1 credit: {scripts} reservation scripts (fixed batches of 20: 250)")
    assert scripts <= 20
    await meter.flush(everything=True)
    balance = await meter.accounts.balance(organization, allowance=allowance)
    assert (balance.used, balance.reserved, balance.remaining) == (5_000, 0, allowance - 5_000)
    await redis.aclose()


async def test_reservations_stay_small_against_a_small_allowance(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    """1 % of a 2,000-credit month: one replica never sits on more than ~25 unspent credits."""
    redis = await redis_endpoint.connect()
    organization, allowance = org(), 2_000
    meter = Meter.of(redis, backends.mongo, f"small-{organization}")
    for _ in range(1_000):
        await meter.spend(organization, 1, allowance=allowance)
    balance = await meter.accounts.balance(organization, allowance=allowance)
    assert 0 <= balance.reserved - 1_000 <= 25, balance.reserved
    await meter.flush(everything=True)
    await redis.aclose()


async def test_a_failed_prefetch_does_not_fail_a_later_debit(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    """The prefetch times out while Redis is paused; once Redis answers, debits go on."""
    redis, admin = await redis_endpoint.connect(), await redis_endpoint.connect()
    # CLIENT PAUSE on every node: a cluster client sends it to all of them
    pause_all = {"target_nodes": RedisCluster.ALL_NODES} if isinstance(admin, RedisCluster) else {}
    organization, allowance = org(), 1000
    meter = Meter.of(redis, backends.mongo, f"pause-{organization}", batch=8, timeout_s=0.1)
    accounts = meter.accounts
    await accounts.debit(organization, 1, allowance=allowance)  # reserves 8
    await admin.client_pause(300, all=True, **pause_all)  # CLIENT PAUSE 300 (ALL)
    for _ in range(6):  # the last of these leaves 1 < 8 // 4 and starts a prefetch
        assert accounts.try_debit(organization, 1)
    await asyncio.sleep(0.4)  # the prefetch timed out; the pause is over
    for _ in range(10):
        await accounts.debit(organization, 1, allowance=allowance)
    for _ in range(17):
        meter.finish(organization, 1)
    await meter.flush(everything=True)
    balance = await accounts.balance(organization, allowance=allowance)
    assert (balance.used, balance.reserved, balance.remaining) == (17, 0, allowance - 17)
    await redis.aclose()
    await admin.aclose()


async def test_a_prefetch_in_flight_at_shutdown_strands_nothing(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    """Shutdown waits for top-ups in flight before the final settle, so no credits stay
    reserved for a replica that no longer exists."""
    redis = await redis_endpoint.connect()
    organization, allowance = org(), 10_000
    meter = Meter.of(redis, backends.mongo, f"leaving-{organization}")
    accounts = meter.accounts
    await meter.spend(organization, 1, allowance=allowance)
    spent = 1
    while not accounts.top_up_in_flight():
        assert accounts.try_debit(organization, 1)
        meter.finish(organization, 1)
        spent += 1
    await accounts.drain()  # what RunningServer.stop does before the final settle
    await meter.flush(everything=True)
    balance = await accounts.balance(organization, allowance=allowance)
    held = await redis.hget(
        CreditAccounts.key(organization, balance.period), "res:" + meter.accounts.replica
    )
    assert (balance.reserved, int(held or 0)) == (0, 0)
    assert (balance.used, balance.remaining) == (spent, allowance - spent)
    await redis.aclose()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_every_caller_waiting_on_an_unreachable_redis_is_unavailable(
    backends: Backends, cluster: bool
) -> None:
    """Not RESOURCE_EXHAUSTED ("used up for the month") for the callers that woke up second."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    redis = open_redis(nowhere, cluster=cluster, timeout_s=5.0)
    meter = Meter.of(redis, backends.mongo, "cut-off", timeout_s=0.5)
    organization = org()
    outcomes = await asyncio.gather(
        *(meter.accounts.debit(organization, 1, allowance=100) for _ in range(5)),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == ["UnavailableError"] * 5
    await redis.aclose()


async def test_a_call_across_a_month_boundary_belongs_to_the_month_it_started_in(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    """Debited at 23:59:59.9 on 30 November, finished in December: November's balance
    settles it and November's ledger has it, so ledger == used holds for both months."""
    redis = await redis_endpoint.connect()
    clock = [datetime(2026, 11, 30, 23, 59, 59, 900_000, tzinfo=UTC).timestamp()]
    organization = org()
    meter = Meter.of(redis, backends.mongo, f"midnight-{organization}", clock=lambda: clock[0])
    started = clock[0]
    await meter.accounts.debit(organization, 3, allowance=100, at=started)
    clock[0] = datetime(2026, 12, 1, 0, 0, 0, 200_000, tzinfo=UTC).timestamp()
    meter.finish(organization, 3, at=started)
    await meter.flush(everything=True)
    november = await redis.hgetall(CreditAccounts.key(organization, "2026-11"))
    assert (int(november[b"used"]), int(november[b"reserved"])) == (3, 0)
    assert await meter.usage.ledger_total(organization, "2026-11") == 3
    assert await meter.usage.ledger_total(organization, "2026-12") == 0
    await redis.aclose()
