"""The rate limiter's Redis: LEASE_SCRIPT on a real redis-server and in `FakeLeaseRedis`,
the same grants, stocks and waits for the same requests."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from server.backends import Backends
from storage.metering.rate_limiter import LEASE_SCRIPT, LeaseScript, ScriptHost
from tests.support.fakes import FakeLeaseRedis
from tests.support.unit_tier import FAKE_AND_REAL

SLOW = 0.001  # tokens per second: nothing refills while a case runs


@pytest.fixture(params=FAKE_AND_REAL)
def lease(request: pytest.FixtureRequest) -> LeaseScript:
    host: ScriptHost
    if request.param == "fake":
        host = FakeLeaseRedis()
    else:
        backends: Backends = request.getfixturevalue("backends")
        host = backends.redis
    return host.register_script(LEASE_SCRIPT)


def bucket() -> str:
    return "mg:{org_" + secrets.token_hex(8) + "}:rl:contract"


async def take(
    lease: LeaseScript, name: str, *, rate: float, burst: int, want: int
) -> tuple[int, float, float]:
    grant, tokens, wait = await lease(keys=[name], args=[rate, burst, want])
    return int(grant), float(tokens), float(wait)


async def test_a_new_bucket_starts_full_and_grants_what_it_holds(lease: LeaseScript) -> None:
    name = bucket()
    grant, tokens, wait = await take(lease, name, rate=SLOW, burst=10, want=4)
    assert grant == 4 and tokens == pytest.approx(6, abs=0.01) and wait == 0
    # short of a full lease: what is left, and how long until `want` tokens have accrued
    grant, tokens, wait = await take(lease, name, rate=SLOW, burst=10, want=8)
    assert grant == 6 and tokens == pytest.approx(0, abs=0.01)
    assert wait == pytest.approx(8 / SLOW, rel=0.01)
    grant, tokens, wait = await take(lease, name, rate=SLOW, burst=10, want=1)
    assert grant == 0 and wait == pytest.approx(1 / SLOW, rel=0.01)


async def test_a_lease_never_exceeds_the_burst(lease: LeaseScript) -> None:
    grant, tokens, wait = await take(lease, bucket(), rate=SLOW, burst=10, want=25)
    assert grant == 10 and tokens == pytest.approx(0, abs=0.01)
    assert wait == pytest.approx(10 / SLOW, rel=0.01)  # capped at the burst


async def test_waits_are_capped_at_a_week(lease: LeaseScript) -> None:
    grant, _, _ = await take(lease, name := bucket(), rate=1e-9, burst=1, want=1)
    assert grant == 1
    grant, _, wait = await take(lease, name, rate=1e-9, burst=1, want=1)
    assert grant == 0 and wait == 604_800


async def test_buckets_are_apart_and_refill_at_their_rate(lease: LeaseScript) -> None:
    first, second = bucket(), bucket()
    assert (await take(lease, first, rate=200, burst=10, want=10))[0] == 10
    assert (await take(lease, second, rate=200, burst=10, want=10))[0] == 10
    await asyncio.sleep(0.05)  # 10 tokens at 200/s
    grant, _, _ = await take(lease, first, rate=200, burst=10, want=10)
    assert 5 <= grant <= 10
