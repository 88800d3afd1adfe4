"""Credits against a real redis-server and a Redis Cluster: never negative, ledger == balance,
lazy monthly refill."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from server.backends import Backends, open_redis
from storage.backends.redis_client import RedisClient
from storage.core.errors import ResourceExhaustedError
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import CreditAccounts, period_of
from storage.metering.usage import UsageRecorder
from tests.support.processes import RedisServer, free_port
from tests.support.redis_cluster import RedisEndpoint


def org() -> str:
    return "org_" + secrets.token_hex(10)[:20]


async def test_concurrent_debits_never_overdraw_and_reconcile(
    redis_endpoint: RedisEndpoint, backends: Backends
) -> None:
    redis = await redis_endpoint.connect()
    events = CreditEvents(mongo=backends.mongo)
    replicas = [
        CreditAccounts(redis=redis, replica=f"r{i}", batch=7, on_threshold=events.record)
        for i in range(3)
    ]
    organization = org()
    usage = [UsageRecorder(mongo=backends.mongo, replica=f"r{i}-{organization}") for i in range(3)]
    allowance = 500
    admitted = refused = 0

    async def caller(i: int) -> None:
        nonlocal admitted, refused
        replica, recorder = replicas[i % 3], usage[i % 3]
        for n in range(60):
            cost = 1 + (n % 3)
            try:
                await replica.debit(organization, cost, allowance=allowance)
            except ResourceExhaustedError:
                refused += 1
                continue
            admitted += cost
            replica.complete(organization, cost, refund=False)
            recorder.record(
                organization_id=organization,
                environment="development",
                namespace_id="",
                method="/m",
                status="OK",
                credits=cost,
                rate_limited=False,
            )
            if n % 10 == 0:
                spent = replica.spent_snapshot()
                await recorder.flush()
                await replica.settle(spent=spent)

    await asyncio.gather(*(caller(i) for i in range(12)))
    for replica, recorder in zip(replicas, usage, strict=True):
        await recorder.flush()
        await replica.settle(everything=True)
    balance = await replicas[0].balance(organization, allowance=allowance)
    print(f"\ncredits: {admitted} spent of {allowance}, {refused} calls refused")
    assert balance.remaining >= 0 and balance.reserved == 0
    assert admitted <= allowance and refused > 0
    assert balance.used == admitted  # every admitted credit settled
    assert balance.remaining + balance.used == allowance  # nothing lost, nothing invented
    assert (
        await usage[0].ledger_total(organization, balance.period) == balance.used
    )  # ledger == balance
    assert await events.thresholds(organization, balance.period) == [80, 95, 100]
    await redis.aclose()


async def test_grants_add_to_the_current_period(redis_endpoint: RedisEndpoint) -> None:
    redis = await redis_endpoint.connect()
    accounts = CreditAccounts(redis=redis, replica="g")
    organization = org()
    before = await accounts.balance(organization, allowance=10)
    after = await accounts.grant(organization, 15, allowance=10)
    assert (before.remaining, after.remaining, after.granted, after.total) == (10, 25, 15, 25)
    await redis.aclose()


async def test_monthly_refill_is_lazy(redis_endpoint: RedisEndpoint) -> None:
    """The clock crosses a month boundary: the new period starts with the plan's allowance."""
    redis = await redis_endpoint.connect()
    clock = [datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)]

    def wall_clock() -> float:
        return clock[0].timestamp()

    accounts = CreditAccounts(redis=redis, replica="c", batch=5, clock=wall_clock)
    organization = org()
    for _ in range(5):
        await accounts.debit(organization, 1, allowance=5)
        accounts.complete(organization, 1, refund=False)
    try:
        await accounts.debit(organization, 1, allowance=5)
        raise AssertionError("the sixth credit of a 5-credit month was granted")
    except ResourceExhaustedError as exc:
        assert exc.retry_after_s is not None and exc.retry_after_s <= 1.0 + 1e-6
    await accounts.settle(everything=True)
    november = await accounts.balance(organization, allowance=5)
    clock[0] = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    await accounts.debit(organization, 1, allowance=5)
    accounts.complete(organization, 1, refund=False)
    await accounts.settle(everything=True)
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


async def _spend(accounts: CreditAccounts, organization: str, calls: int, allowance: int) -> None:
    """What the credits step does per call: the reservation, else wait for Redis."""
    for _ in range(calls):
        if not accounts.try_debit(organization, 1):
            await accounts.debit(organization, 1, allowance=allowance)
        accounts.complete(organization, 1, refund=False)


async def test_busy_organizations_reserve_in_growing_batches(redis_endpoint: RedisEndpoint) -> None:
    redis = await redis_endpoint.connect()
    accounts = CreditAccounts(redis=redis, replica="busy")
    organization, allowance = org(), 1_000_000
    key = CreditAccounts.key(organization, period_of(accounts.now()))
    before = await _script_calls(redis, key)
    await _spend(accounts, organization, 5_000, allowance)
    scripts = await _script_calls(redis, key) - before
    print(f"\n5000 debits of 1 credit: {scripts} reservation scripts (fixed batches of 20: 250)")
    assert scripts <= 20
    await accounts.settle(everything=True)
    balance = await accounts.balance(organization, allowance=allowance)
    assert (balance.used, balance.reserved, balance.remaining) == (5_000, 0, allowance - 5_000)
    await redis.aclose()


async def test_reservations_stay_small_against_a_small_allowance(
    redis_endpoint: RedisEndpoint,
) -> None:
    """1 % of a 2,000-credit month: one replica never sits on more than ~25 unspent credits."""
    redis = await redis_endpoint.connect()
    accounts = CreditAccounts(redis=redis, replica="small")
    organization, allowance = org(), 2_000
    await _spend(accounts, organization, 1_000, allowance)
    balance = await accounts.balance(organization, allowance=allowance)
    spent = sum(accounts.spent_snapshot().values())
    assert 0 <= balance.reserved - spent <= 25, (balance.reserved, spent)
    await accounts.settle(everything=True)
    await redis.aclose()


async def test_a_failed_prefetch_does_not_fail_a_later_debit(redis_server: RedisServer) -> None:
    """The prefetch times out while Redis is paused; once Redis answers, debits go on."""
    redis, admin = Redis.from_url(redis_server.url), Redis.from_url(redis_server.url)
    accounts = CreditAccounts(redis=redis, replica="pause", batch=8, timeout_s=0.1)
    organization, allowance = org(), 100
    await accounts.debit(organization, 1, allowance=allowance)  # reserves 8
    await admin.client_pause(300, all=True)  # CLIENT PAUSE 300 (ALL)
    for _ in range(6):  # the last of these leaves 1 < 8 // 4 and starts a prefetch
        assert accounts.try_debit(organization, 1)
    await asyncio.sleep(0.4)  # the prefetch timed out; the pause is over
    for _ in range(10):
        await accounts.debit(organization, 1, allowance=allowance)
    for _ in range(17):
        accounts.complete(organization, 1, refund=False)
    await accounts.settle(everything=True)
    balance = await accounts.balance(organization, allowance=allowance)
    assert (balance.used, balance.reserved, balance.remaining) == (17, 0, allowance - 17)
    await redis.aclose()
    await admin.aclose()


async def test_a_prefetch_in_flight_at_shutdown_strands_nothing(
    redis_endpoint: RedisEndpoint,
) -> None:
    """Shutdown waits for top-ups in flight before the final settle, so no credits stay
    reserved for a replica that no longer exists."""
    redis = await redis_endpoint.connect()
    accounts = CreditAccounts(redis=redis, replica="leaving")
    organization, allowance = org(), 10_000
    await accounts.debit(organization, 1, allowance=allowance)
    accounts.complete(organization, 1, refund=False)
    spent = 1
    while not accounts.top_up_in_flight():
        assert accounts.try_debit(organization, 1)
        accounts.complete(organization, 1, refund=False)
        spent += 1
    await accounts.drain()  # what RunningServer.stop does before the final settle
    await accounts.settle(everything=True)
    balance = await accounts.balance(organization, allowance=allowance)
    held = await redis.hget(CreditAccounts.key(organization, balance.period), "res:leaving")
    assert (balance.reserved, int(held or 0)) == (0, 0)
    assert (balance.used, balance.remaining) == (spent, allowance - spent)
    await redis.aclose()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_every_caller_waiting_on_an_unreachable_redis_is_unavailable(cluster: bool) -> None:
    """Not RESOURCE_EXHAUSTED ("used up for the month") for the callers that woke up second."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    redis = open_redis(nowhere, cluster=cluster, timeout_s=5.0)
    accounts = CreditAccounts(redis=redis, replica="cut-off", timeout_s=0.5)
    organization = org()
    outcomes = await asyncio.gather(
        *(accounts.debit(organization, 1, allowance=100) for _ in range(5)),
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
    accounts = CreditAccounts(redis=redis, replica="midnight", clock=lambda: clock[0])
    usage = UsageRecorder(
        mongo=backends.mongo, replica=f"midnight-{organization}", clock=lambda: clock[0]
    )
    started = clock[0]
    await accounts.debit(organization, 3, allowance=100, at=started)
    clock[0] = datetime(2026, 12, 1, 0, 0, 0, 200_000, tzinfo=UTC).timestamp()
    accounts.complete(organization, 3, refund=False, at=started)
    usage.record(
        organization_id=organization,
        environment="development",
        namespace_id="",
        method="/m",
        status="OK",
        credits=3,
        rate_limited=False,
        at=started,
    )
    spent = accounts.spent_snapshot()
    await usage.flush()
    await accounts.settle(spent=spent, everything=True)
    november = await redis.hgetall(CreditAccounts.key(organization, "2026-11"))
    assert (int(november[b"used"]), int(november[b"reserved"])) == (3, 0)
    assert await usage.ledger_total(organization, "2026-11") == 3
    assert await usage.ledger_total(organization, "2026-12") == 0
    await redis.aclose()
