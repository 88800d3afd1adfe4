"""Redis faults under load: killed with SIGKILL and restarted (with and without
persistence), and a Redis that stops answering for two seconds (`DEBUG SLEEP`).

For each: no acknowledged write is lost, no call waits on Redis for long, calls succeed
again without restarting anything, and credits never go beyond the bound of
docs/limits.md (with persistence, or a slow Redis: never beyond the allowance), with
`used` equal to the calls charged once everything has settled.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from tests.support.faults import ALLOWANCE, FaultCluster, FaultRow, Traffic

pytestmark = pytest.mark.slow


async def settled_credits(traffic: Traffic) -> int:
    """`used` of the small organization once every replica has settled (a few flushes)."""
    await asyncio.sleep(2.5)
    return (await traffic.credit_balance(0)).used


@pytest.mark.parametrize("appendonly", [False, True], ids=["no-persistence", "appendonly"])
async def test_redis_killed_and_restarted(
    appendonly: bool, fault_cluster: FaultCluster, traffic: Traffic, fault_rows: list[FaultRow]
) -> None:
    server = fault_cluster.cluster.redis
    if server.appendonly != appendonly:  # set up, before the traffic starts
        server.stop()
        server.appendonly = appendonly
        server.start()
        await asyncio.sleep(1.5)  # replicas reconnect (their pooled connections broke)
    traffic.start()
    # the fault comes when the small organization is close to its last credits, spent
    # slowly for a while (so that the bound, which counts the last flush interval's
    # debits, stays well below the 2 x ALLOWANCE a Redis that forgot the month would
    # admit), and the spending is fast again once Redis is back
    await traffic.wait_for_admitted(ALLOWANCE - 70)
    traffic.credits.pause_s = 0.1
    await asyncio.sleep(1.5)
    killed = time.monotonic()
    server.kill()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(server.start)
    back = time.monotonic()
    traffic.credits.pause_s = traffic.pause_s
    await asyncio.sleep(4.0)
    await traffic.stop()

    before, during = traffic.documents.window(0, killed), traffic.documents.window(killed, back)
    recovered = traffic.documents.recovered_at(back)
    admitted = traffic.admitted()
    bound = traffic.credit_bound(ALLOWANCE, killed, len(traffic.replicas))
    fault_rows.append(
        FaultRow(
            f"redis-server SIGKILL, restart {'(appendonly)' if appendonly else '(no persistence)'}",
            during,
            None if recovered is None else recovered - back,
            admitted,
            ALLOWANCE,
            note=f"credit bound {bound}",
        )
    )
    assert set(during.codes) <= {"OK", "UNAVAILABLE"}, during.codes
    # nothing waits on a dead Redis: at most 0.2 s (limiter) and 0.5 s (credits) more than
    # the slowest call before the fault (this machine's noise)
    assert during.slowest_s() < 1.0 + before.slowest_s()
    assert recovered is not None and recovered - back < 5.0
    assert await traffic.unreadable(0) == set()
    assert admitted <= (ALLOWANCE if appendonly else bound)
    assert await settled_credits(traffic) == admitted


async def test_slow_redis(
    fault_cluster: FaultCluster, traffic: Traffic, fault_rows: list[FaultRow]
) -> None:
    admin = redis.Redis(port=fault_cluster.cluster.redis.port)
    traffic.start()
    await asyncio.sleep(1.0)
    slow = time.monotonic()
    await asyncio.to_thread(admin.execute_command, "DEBUG", "SLEEP", "2")
    fast = time.monotonic()
    await asyncio.sleep(3.0)
    await traffic.stop()
    admin.close()

    before, during = traffic.documents.window(0, slow), traffic.documents.window(slow, fast)
    recovered = traffic.documents.recovered_at(fast)
    admitted = traffic.admitted()
    fault_rows.append(
        FaultRow(
            "slow Redis (DEBUG SLEEP 2)",
            during,
            None if recovered is None else recovered - fast,
            admitted,
            ALLOWANCE,
        )
    )
    assert set(during.codes) <= {"OK", "UNAVAILABLE"}, during.codes
    # a call waits at most 0.2 s for the limiter and 0.5 s for credits, not for the sleep
    assert during.p99_s() < 1.0 + before.p99_s()
    assert recovered is not None and recovered - fast < 3.0
    assert await traffic.unreadable(0) == set()
    assert admitted <= ALLOWANCE
    assert await settled_credits(traffic) == admitted
