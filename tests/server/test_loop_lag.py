"""The event loop's lag, as /metrics shows it: a stall of the loop is visible in the
histogram and in the recent maximum, and an idle loop shows none."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

from prometheus_client import CollectorRegistry, Histogram

from interceptors.metrics import LAG_BUCKETS
from server.app import RunningServer
from server.loop_lag import LoopLag
from tests.server.test_observability import sample, scrape
from tests.support.waiting import eventually


async def test_a_stall_shows_in_the_lag_metrics(server: RunningServer) -> None:
    before = await asyncio.to_thread(scrape, server.metrics_port)
    slow_before = sample(before, "meshgate_event_loop_lag_seconds_count") - sample(
        before, "meshgate_event_loop_lag_seconds_bucket", le="0.25"
    )
    time.sleep(0.4)  # noqa: ASYNC251 - holds the loop the server runs on, as a blocking parse would

    async def recorded() -> bool:
        after = await asyncio.to_thread(scrape, server.metrics_port)
        slow = sample(after, "meshgate_event_loop_lag_seconds_count") - sample(
            after, "meshgate_event_loop_lag_seconds_bucket", le="0.25"
        )
        return slow > slow_before and sample(after, "meshgate_event_loop_lag_max_seconds") >= 0.3

    await eventually(recorded, timeout_s=5, interval_s=0.1)


async def test_an_idle_loop_shows_no_lag() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("lag", "lag", buckets=LAG_BUCKETS, registry=registry)
    lag = LoopLag(histogram=histogram, every_s=0.01, window_s=1.0)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
    count = registry.get_sample_value("lag_count")
    assert count is not None and count >= 5
    # a loop with nothing else to do runs its timers within a few milliseconds
    assert lag.max_recent() < 0.1


def test_the_maximum_covers_the_window_only() -> None:
    now = [0.0]
    registry = CollectorRegistry()
    histogram = Histogram("lag", "lag", buckets=LAG_BUCKETS, registry=registry)
    lag = LoopLag(histogram=histogram, every_s=0.1, window_s=60.0, clock=lambda: now[0])
    lag.record(2.0)
    now[0] = 30.0
    lag.record(0.01)
    assert lag.max_recent() == 2.0
    now[0] = 61.0
    assert lag.max_recent() == 0.01
    assert registry.get_sample_value("lag_bucket", {"le": "2.5"}) == 2


def test_the_maximum_is_read_safely_while_the_loop_records() -> None:
    """/metrics reads the maximum in its own thread while the loop records samples; the
    reader saw 'deque mutated during iteration' (HTTP 500 from /metrics) once in a full
    run before the deque was copied first."""
    registry = CollectorRegistry()
    histogram = Histogram("lag", "lag", buckets=LAG_BUCKETS, registry=registry)
    lag = LoopLag(histogram=histogram, every_s=0.1, window_s=60.0)
    for _ in range(600):
        lag.record(0.001)
    done = threading.Event()

    def record() -> None:
        while not done.is_set():
            lag.record(0.002)

    writer = threading.Thread(target=record)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    writer.start()
    try:
        for _ in range(2_000):
            assert lag.max_recent() <= 0.002
    finally:
        done.set()
        writer.join()
        sys.setswitchinterval(previous)
