"""Circuit breakers: open on a store failure or a failed probe, probe while open, close on
the first answer; only changes of the monitor's verdict count."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pymongo.errors import AutoReconnect, ExecutionTimeout, ServerSelectionTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

from storage.backends.breaker import StoreBreaker, StoreBreakers
from storage.backends.health import DependencyState


class Store:
    """A probe target that is down until told otherwise, counting the probes."""

    def __init__(self) -> None:
        self.up = False
        self.probes = 0
        self.probed_thrice = asyncio.Event()

    async def ping(self) -> None:
        self.probes += 1
        if self.probes >= 3:
            self.probed_thrice.set()
        if not self.up:
            raise AutoReconnect("connection refused")


def state(name: str, up: bool) -> DependencyState:
    return DependencyState(name, up, 0.001, datetime.now(UTC), "" if up else "AutoReconnect")


async def test_a_tripped_breaker_probes_until_the_store_answers() -> None:
    store = Store()
    breaker = StoreBreaker(name="mongodb", probe=store.ping, probe_every_s=0.01)
    assert breaker.closed
    breaker.trip("AutoReconnect")
    assert not breaker.closed
    assert 0.0 < breaker.retry_after_s() <= 0.05
    await asyncio.wait_for(store.probed_thrice.wait(), 5.0)  # it keeps probing while down
    assert not breaker.closed
    store.up = True
    assert await breaker.wait_closed(5.0)
    assert breaker.opened == 1
    await breaker.close()


async def test_call_failures_open_the_breaker_of_the_store_they_name() -> None:
    mongo, qdrant = Store(), Store()
    breakers = StoreBreakers(
        {
            "mongodb": StoreBreaker(name="mongodb", probe=mongo.ping, probe_every_s=10),
            "qdrant": StoreBreaker(name="qdrant", probe=qdrant.ping, probe_every_s=10),
        }
    )
    breakers.failed(ExecutionTimeout("operation exceeded time limit"))  # slow, not down
    breakers.failed(RedisConnectionError("down"))  # Redis has no breaker
    breakers.failed(RuntimeError("bug"))
    assert breakers["mongodb"].closed and breakers["qdrant"].closed
    breakers.failed(ServerSelectionTimeoutError("no servers"))
    assert not breakers["mongodb"].closed and breakers["qdrant"].closed
    await breakers.close()


async def test_only_changes_of_the_monitor_verdict_count() -> None:
    store = Store()
    breakers = StoreBreakers(
        {"mongodb": StoreBreaker(name="mongodb", probe=store.ping, probe_every_s=10)}
    )
    breakers.observe({"mongodb": state("mongodb", True)})
    breakers.failed(AutoReconnect("connection reset"))
    # a monitor round that still says "up" (its probe ran before the failure) changes nothing
    breakers.observe({"mongodb": state("mongodb", True), "redis": state("redis", False)})
    assert not breakers["mongodb"].closed
    breakers.observe({"mongodb": state("mongodb", False)})
    assert not breakers["mongodb"].closed
    breakers.observe({"mongodb": state("mongodb", True)})  # down -> up: closes
    assert breakers["mongodb"].closed
    breakers.observe({"mongodb": state("mongodb", False)})  # up -> down: opens
    assert not breakers["mongodb"].closed
    await breakers.close()
