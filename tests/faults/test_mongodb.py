"""MongoDB (the wire engine, a process of its own) stopped for 3 s under load and started
again with its data: calls that need it are refused at once while it is down, calls
succeed again soon after it returns without restarting anything, every acknowledged
write is readable, and no credit is admitted beyond the allowance."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.faults import ALLOWANCE, FaultCluster, FaultRow, Traffic

pytestmark = pytest.mark.slow

BACKEND_TIMEOUT_S = 5.0  # MESHGATE_BACKEND_TIMEOUT_S of the replicas (the default)


async def test_mongodb_stopped_and_restarted(
    fault_cluster: FaultCluster, traffic: Traffic, fault_rows: list[FaultRow]
) -> None:
    traffic.start()
    await asyncio.sleep(1.0)
    down = time.monotonic()
    await asyncio.to_thread(fault_cluster.mongo.stop)
    await asyncio.sleep(3.0)
    await asyncio.to_thread(fault_cluster.mongo.start)
    back = time.monotonic()
    await asyncio.sleep(3.0)
    await traffic.stop()

    before, during = traffic.documents.window(0, down), traffic.documents.window(down, back)
    # a worker's call already waiting on MongoDB when it went away waits for the driver; its
    # calls after the breaker's first refusal are refused at once
    waiting, refused = traffic.documents.split_at_first(down, back, details="retry in")
    recovered = traffic.documents.recovered_at(back)
    admitted = traffic.admitted()
    fault_rows.append(
        FaultRow(
            "MongoDB stopped 3 s, restarted",
            during,
            None if recovered is None else recovered - back,
            admitted,
            ALLOWANCE,
            note="slowest: calls already waiting on MongoDB when it went",
        )
    )
    assert set(during.codes) <= {"OK", "UNAVAILABLE"}, during.codes
    assert during.codes["UNAVAILABLE"] > 50  # refused at once, not one per 5 s timeout
    assert refused.p99_s() < 0.5 + before.p99_s()
    assert len([s for s in waiting.samples if s.seconds > 0.5 + before.p99_s()]) <= len(
        traffic.replicas
    )
    # nothing waits longer than the driver's timeouts (and this machine's noise)
    assert during.slowest_s() < BACKEND_TIMEOUT_S + 1.0 + before.slowest_s()
    assert recovered is not None and recovered - back < 2.0
    assert await traffic.unreadable(0) == set()
    assert admitted <= ALLOWANCE
    await asyncio.sleep(2.5)  # the usage kept while MongoDB was down is written, then settled
    assert (await traffic.credit_balance(1)).used == admitted
