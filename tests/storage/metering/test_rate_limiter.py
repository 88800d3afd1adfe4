"""The leased token bucket against a real redis-server and a Redis Cluster: exact upper bound,
fallback, recovery."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.asyncio import Redis

from server.backends import open_redis
from storage.core.errors import UnavailableError
from storage.core.plans import Limit
from storage.metering.rate_limiter import LEASE_SCRIPT, FailureMode, RateLimiter, lease_size
from tests.support.processes import RedisServer, free_port
from tests.support.redis_cluster import RedisEndpoint


def bucket() -> str:
    return f"mg:{{org_test{time.monotonic_ns()}}}:rl:data"


async def hammer(
    limiters: list[RateLimiter], name: str, limit: Limit, seconds: float, workers: int = 20
) -> tuple[int, int, float]:
    """(admitted, refused, elapsed) for concurrent callers spread over the limiters (replicas)."""
    admitted = refused = 0
    started = time.monotonic()

    async def worker(limiter: RateLimiter) -> None:
        nonlocal admitted, refused
        while time.monotonic() - started < seconds:
            decision = await limiter.acquire(name, limit)
            if decision.allowed:
                admitted += 1
            else:
                refused += 1
                await asyncio.sleep(min(decision.retry_after_s, 0.01))

    await asyncio.gather(*(worker(limiters[i % len(limiters)]) for i in range(workers)))
    return admitted, refused, time.monotonic() - started


async def test_three_replicas_never_admit_more_than_one_bucket(
    redis_endpoint: RedisEndpoint,
) -> None:
    redis = await redis_endpoint.connect()
    # a loaded CI machine can take longer than the 0.2 s default to run a script; a timeout
    # is an outage (the local fallback), which this test is not about
    replicas = [RateLimiter(redis=redis, timeout_s=1.0) for _ in range(3)]
    limit = Limit(per_second=200, burst=50)
    admitted, refused, elapsed = await hammer(replicas, bucket(), limit, 1.5)
    assert sum(r.fallbacks for r in replicas) == 0  # every decision came from the shared bucket
    capacity = limit.burst + limit.per_second * elapsed
    stranded = 2 * len(replicas) * lease_size(limit)
    print(f"\nleased limiter: admitted {admitted} of capacity {capacity:.0f} (refused {refused})")
    assert admitted <= capacity
    assert admitted >= capacity - stranded - limit.per_second * 0.1  # 0.1 s of scheduling slack
    assert refused > 0
    calls = sum(r.redis_calls for r in replicas)
    assert calls < admitted  # leases: fewer Redis round trips than calls
    for replica in replicas:
        await replica.drain()
    await redis.aclose()


async def test_high_limits_cost_few_round_trips(redis_endpoint: RedisEndpoint) -> None:
    redis = await redis_endpoint.connect()
    limiter = RateLimiter(redis=redis)
    limit = Limit(per_second=20_000, burst=40_000)
    name = bucket()
    for _ in range(5_000):
        assert (await limiter.acquire(name, limit)).allowed
    print(f"\n5000 calls, {limiter.redis_calls} Redis round trips (lease {lease_size(limit)})")
    assert limiter.redis_calls <= 5_000 // lease_size(limit) + 2
    await limiter.drain()
    await redis.aclose()


async def test_headers_and_retry_after(redis_endpoint: RedisEndpoint) -> None:
    redis = await redis_endpoint.connect()
    limiter = RateLimiter(redis=redis)
    limit = Limit(per_second=2, burst=3)
    name = bucket()
    decisions = [await limiter.acquire(name, limit) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].headers()[0] == ("ratelimit-limit", "3")
    assert 0 < decisions[3].retry_after_s <= 0.5 + 1e-6
    await asyncio.sleep(decisions[3].retry_after_s + 0.05)
    assert (await limiter.acquire(name, limit)).allowed
    await limiter.drain()
    await redis.aclose()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
@pytest.mark.parametrize("mode", [FailureMode.LOCAL, FailureMode.OPEN, FailureMode.CLOSED])
async def test_redis_down_uses_the_configured_fallback_without_hanging(
    mode: FailureMode, cluster: bool
) -> None:
    """Nothing listens: a cluster client fails in its own way (it cannot learn the slot map),
    and the limiter takes it as Redis being down all the same."""
    dead = open_redis(f"redis://127.0.0.1:{free_port()}/0", cluster=cluster, timeout_s=0.2)
    fallbacks: list[str] = []
    limiter = RateLimiter(redis=dead, failure_mode=mode, on_fallback=fallbacks.append)
    limit = Limit(per_second=1, burst=2)
    started = time.monotonic()
    results: list[bool | None] = []
    for _ in range(4):
        try:
            results.append((await limiter.acquire("mg:{org_x}:rl:data", limit)).allowed)
        except UnavailableError:
            results.append(None)
    assert time.monotonic() - started < 1.0  # one timeout at most, then the circuit is open
    assert len(fallbacks) == 4
    expected = {
        FailureMode.LOCAL: [True, True, False, False],
        FailureMode.OPEN: [True, True, True, True],
        FailureMode.CLOSED: [None, None, None, None],
    }
    assert results == expected[mode]
    await limiter.drain()
    await dead.aclose()


async def test_recovers_when_redis_comes_back(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = RedisServer.on_free_port(tmp_path_factory.mktemp("r"))
    redis = Redis.from_url(server.url, socket_connect_timeout=0.2, socket_timeout=0.2)
    limiter = RateLimiter(redis=redis, retry_after_s=0.2)
    limit = Limit(per_second=1, burst=1)
    await limiter.acquire("mg:{org_r}:rl:data", limit)  # Redis not started: fallback
    assert limiter.fallbacks == 1
    server.start()
    try:
        await asyncio.sleep(0.25)
        assert (await limiter.acquire("mg:{org_r}:rl:data", limit)).allowed
        assert limiter.redis_calls >= 1 and limiter.fallbacks == 1
        assert not (await limiter.acquire("mg:{org_r}:rl:data", limit)).allowed
    finally:
        server.stop()
        await limiter.drain()
        await redis.aclose()


async def test_a_script_error_degrades_only_its_bucket(redis_server: RedisServer) -> None:
    """One bucket's script fails (here: its key holds a string, so Redis answers WRONGTYPE;
    in the review, an out-of-range expiry). In `closed` mode that bucket is UNAVAILABLE
    for a while; every other bucket keeps its lease and its Redis."""
    redis = Redis.from_url(redis_server.url)
    limiter = RateLimiter(redis=redis, failure_mode=FailureMode.CLOSED)
    limit = Limit(per_second=100, burst=100)
    healthy, broken = bucket(), bucket()
    assert (await limiter.acquire(healthy, limit)).allowed
    await redis.set(broken, "not a bucket")
    with pytest.raises(UnavailableError):
        await limiter.acquire(broken, limit)
    calls = limiter.redis_calls
    for _ in range(5):
        assert (await limiter.acquire(healthy, limit)).allowed
    assert limiter.fallbacks == 1  # the broken bucket's refusal only
    assert limiter.redis_calls - calls <= 1  # the healthy lease was kept, not cleared
    await redis.delete(broken)
    await redis.aclose()


async def test_the_lease_script_clamps_its_arithmetic(redis_server: RedisServer) -> None:
    """Whatever rate and burst reach the script, its expiry and wait stay whole, bounded
    numbers (a tiny rate overflowed PEXPIRE: "value is not an integer or out of range")."""
    redis = Redis.from_url(redis_server.url)
    for rate, burst in ((1e-300, 1), (1e-9, 2_000_000_000), (1e-300, 1e300)):
        name = bucket()
        grant, _stock, wait = await redis.eval(LEASE_SCRIPT, 1, name, rate, burst, 1)
        assert int(grant) == 1
        assert 0 < await redis.pttl(name) <= 7 * 86_400_000 + 1000
        grant, _stock, wait = await redis.eval(LEASE_SCRIPT, 1, name, rate, burst, 10**6)
        assert 0 <= float(wait) <= 7 * 86_400
    await redis.aclose()


async def test_an_outage_is_logged_once_and_its_end_once(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12: "cannot reach Redis" was logged every second of an outage."""
    server = RedisServer.on_free_port(tmp_path_factory.mktemp("outage"))
    redis = Redis.from_url(server.url, socket_connect_timeout=0.2, socket_timeout=0.2)
    now = [1000.0]
    limiter = RateLimiter(redis=redis, clock=lambda: now[0])
    limit = Limit(per_second=100, burst=100)
    caplog.set_level(logging.INFO, logger="meshgate.ratelimit")
    try:
        for _ in range(5):  # five retries of Redis, a second apart, all failing
            await limiter.acquire("mg:{org_o}:rl:data", limit)
            now[0] += 1.5
        assert limiter.fallbacks == 5
        server.start()
        for _ in range(3):
            assert (await limiter.acquire("mg:{org_o}:rl:data", limit)).allowed
        lines = [r.getMessage() for r in caplog.records if r.name == "meshgate.ratelimit"]
        assert [line.split(" (")[0] for line in lines] == [
            "rate limiter cannot reach Redis",
            "rate limiter reaches Redis again after 7.5s",
        ]
    finally:
        server.stop()
        await redis.aclose()


async def test_the_state_kept_per_bucket_is_bounded(redis_server: RedisServer) -> None:
    """Callers name buckets freely (the rate-limit service's descriptors): the leases and the
    local fallback buckets stay at `max_buckets`, the least recently used forgotten; a
    bucket in use keeps its lease."""
    redis = Redis.from_url(redis_server.url)
    # a loaded machine can take longer than the 0.2 s default: a timeout is an outage, which
    # clears every lease, and this test is not about outages
    limiter = RateLimiter(redis=redis, max_buckets=20, timeout_s=2.0)
    limit = Limit(per_second=10_000, burst=10_000)
    hot = bucket()
    assert (await limiter.acquire(hot, limit)).allowed
    for i in range(200):
        assert (await limiter.acquire(f"{bucket()}:{i}", limit)).allowed
        assert (await limiter.acquire(hot, limit)).allowed  # used all along: never forgotten
    assert limiter.lease_count == 20
    calls = limiter.redis_calls
    assert (await limiter.acquire(hot, limit)).allowed
    assert limiter.redis_calls - calls <= 1  # its lease was kept (at most a refill)
    await limiter.drain()
    await redis.aclose()
    dead = open_redis(f"redis://127.0.0.1:{free_port()}/0", cluster=False, timeout_s=0.2)
    local = RateLimiter(redis=dead, max_buckets=20)
    for i in range(200):
        assert (await local.acquire(f"mg:{{org_local}}:rl:{i}", limit)).allowed
    assert local.fallbacks == 200
    assert local.local_bucket_count == 20
    await local.drain()
    await dead.aclose()
