"""Circuit breakers: open on two signs in a row that a store cannot be reached (failed checks,
or calls that could not connect within a second of each other), never on a hint alone (a
cleared pool, a timeout, a cancelled call: a busy host causes those); a hint is probed at once
and holds calls until it is settled; while open, probe until the store answers.

The decision rule is tested with an injected clock, and the breaker with probes the test
answers itself: no sleeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from pymongo.errors import (
    AutoReconnect,
    ExecutionTimeout,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    _OperationCancelled,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from calls.policy import Access, Policy
from calls.state import CallState
from interceptors.availability import StoreAvailability
from storage.backends.breaker import OutageEvidence, StoreBreaker, StoreBreakers
from storage.backends.health import DependencyState
from storage.core.errors import UnavailableError
from tests.support.load import burn_cpu


def refused() -> AutoReconnect:
    """What PyMongo raises when nothing listens: raised from the socket's error."""
    error = AutoReconnect("127.0.0.1:27017: [Errno 111] Connection refused")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    return error


def closed() -> AutoReconnect:
    error = AutoReconnect("127.0.0.1:27017: connection closed")
    error.__cause__ = OSError("connection closed")
    return error


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
            raise refused()


class HeldProbe:
    """A probe that waits until the test answers it: `answer(up)`."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self._answers: asyncio.Queue[bool] = asyncio.Queue()

    async def ping(self) -> None:
        self.asked.set()
        up = await self._answers.get()
        self.asked.clear()
        if not up:
            raise refused()

    async def answer(self, up: bool) -> None:
        await asyncio.wait_for(self.asked.wait(), 5.0)
        await self._answers.put(up)
        for _ in range(5):  # let the breaker take the answer in
            await asyncio.sleep(0)


def state(name: str, up: bool) -> DependencyState:
    """The monitor's verdict: up, or down with the connection refused."""
    error = "" if up else "AutoReconnect"
    return DependencyState(name, up, 0.001, datetime.now(UTC), error, unreachable=not up)


# -- the decision rule -------------------------------------------------------------------


def test_one_failed_check_is_a_hint_and_the_next_one_confirms_it() -> None:
    evidence = OutageEvidence(clock=Clock())
    assert not evidence.check_failed()
    assert evidence.check_failed()


def test_a_check_that_passes_starts_the_count_over() -> None:
    evidence = OutageEvidence(clock=Clock())
    assert not evidence.check_failed()
    evidence.check_passed()
    assert not evidence.check_failed()
    evidence.check_passed()
    assert not evidence.call_failed()


def test_failed_checks_stand_until_the_store_answers() -> None:
    clock = Clock()
    evidence = OutageEvidence(window_s=1.0, clock=clock)
    assert not evidence.check_failed()
    clock.now += 60  # e.g. a probe that waited the backend timeout, then another
    assert evidence.check_failed()


def test_call_failures_count_within_the_window_only() -> None:
    clock = Clock()
    evidence = OutageEvidence(window_s=1.0, clock=clock)
    assert not evidence.call_failed()
    clock.now += 1.5
    assert not evidence.call_failed()  # the first one is too old to count
    clock.now += 0.9
    assert evidence.call_failed()


def test_a_call_failure_and_a_failed_check_together_open() -> None:
    clock = Clock()
    evidence = OutageEvidence(window_s=1.0, clock=clock)
    assert not evidence.call_failed()
    clock.now += 0.2
    assert evidence.check_failed()
    evidence.check_passed()
    assert not evidence.call_failed()
    clock.now += 1.1  # the call's failure has expired; the check stands alone
    assert not evidence.check_failed()


# -- the breaker ---------------------------------------------------------------------------


async def test_a_hint_probes_at_once_holds_calls_and_refuses_nothing() -> None:
    probe = HeldProbe()
    breaker = StoreBreaker(name="mongodb", probe=probe.ping, clock=Clock())
    breaker.suspect("connection pool cleared")
    assert breaker.closed and breaker.in_doubt
    settled = asyncio.create_task(breaker.settled())
    await probe.answer(True)
    await asyncio.wait_for(settled, 5.0)
    assert breaker.closed and not breaker.in_doubt and breaker.opened == 0
    await breaker.close()


async def test_a_hint_confirmed_by_a_second_failed_probe_opens() -> None:
    probe = HeldProbe()
    breaker = StoreBreaker(name="mongodb", probe=probe.ping, probe_every_s=60, clock=Clock())
    breaker.suspect("connection pool cleared")
    await probe.answer(False)
    assert breaker.closed and breaker.in_doubt  # one failed probe: probed again at once
    await probe.answer(False)
    assert not breaker.closed and not breaker.in_doubt and breaker.opened == 1
    await breaker.close()


async def test_heartbeats_that_time_out_only_hint() -> None:
    probe = HeldProbe()
    breaker = StoreBreaker(name="mongodb", probe=probe.ping, clock=Clock())
    for _ in range(3):  # heartbeats late on a busy host
        breaker.checked(False, "heartbeat: NetworkTimeout", proves_down=False)
    assert breaker.closed and breaker.in_doubt
    await probe.answer(True)
    assert breaker.closed and not breaker.in_doubt and breaker.opened == 0
    await breaker.close()


async def test_a_refused_heartbeat_then_a_passed_one_changes_nothing() -> None:
    probe = HeldProbe()
    breaker = StoreBreaker(name="mongodb", probe=probe.ping, clock=Clock())
    breaker.checked(False, "heartbeat: AutoReconnect")
    assert breaker.closed and breaker.in_doubt
    breaker.checked(True)  # the driver's retry answered
    breaker.checked(False, "heartbeat: AutoReconnect")
    assert breaker.closed and breaker.opened == 0
    await probe.answer(True)
    await breaker.close()


async def test_calls_that_time_out_or_are_cancelled_only_hint() -> None:
    probe = HeldProbe()
    breakers = StoreBreakers({"mongodb": StoreBreaker(name="mongodb", probe=probe.ping)})
    for _ in range(5):  # what a busy host does to calls while MongoDB is up
        breakers.failed(_OperationCancelled("operation cancelled"))
        breakers.failed(NetworkTimeout("timed out"))
        breakers.failed(ServerSelectionTimeoutError("no servers"))
        breakers.failed(AutoReconnect("127.0.0.1:27017: connection pool paused"))
    assert breakers["mongodb"].closed and breakers["mongodb"].in_doubt
    await probe.answer(True)
    assert breakers["mongodb"].closed and not breakers["mongodb"].in_doubt
    await breakers.close()


async def test_two_calls_that_cannot_connect_within_a_second_open_the_store_they_name() -> None:
    clock = Clock()
    mongo, qdrant = HeldProbe(), HeldProbe()
    breakers = StoreBreakers(
        {
            "mongodb": StoreBreaker(name="mongodb", probe=mongo.ping, clock=clock),
            "qdrant": StoreBreaker(name="qdrant", probe=qdrant.ping, clock=clock),
        }
    )
    breakers.failed(ExecutionTimeout("operation exceeded time limit"))  # slow, not down
    breakers.failed(RedisConnectionError("down"))  # Redis has no breaker
    breakers.failed(RuntimeError("bug"))
    assert not breakers["mongodb"].in_doubt and breakers["qdrant"].closed
    breakers.failed(refused())
    clock.now += 0.5
    breakers.failed(closed())
    assert not breakers["mongodb"].closed and breakers["qdrant"].closed
    await breakers.close()


async def test_held_calls_are_refused_when_the_breaker_opens() -> None:
    probe = HeldProbe()
    breaker = StoreBreaker(name="mongodb", probe=probe.ping, probe_every_s=60, clock=Clock())
    availability = StoreAvailability(needs={"/m": [breaker]})
    call = CallState(
        method="/m",
        policy=Policy(access=Access.API_KEY),
        request_id="r",
        metadata={},
        peer_address="ipv4:127.0.0.1:1",
    )
    assert availability.check(call, cast(Any, None)) is None
    breaker.suspect("connection pool cleared")
    held = availability.check(call, cast(Any, None))
    assert held is not None
    waiting = asyncio.ensure_future(held)
    await probe.answer(False)
    breaker.checked(False, "heartbeat: AutoReconnect")  # refused at once: the second sign
    with pytest.raises(UnavailableError, match="retry in"):
        await asyncio.wait_for(waiting, 5.0)
    with pytest.raises(UnavailableError):
        availability.check(call, cast(Any, None))
    await breaker.close()


async def test_a_probe_left_without_an_answer_while_the_loop_ran_is_evidence() -> None:
    silent = asyncio.Event()  # a store that accepts the ping and never answers (never set)
    breaker = StoreBreaker(name="mongodb", probe=silent.wait, probe_timeout_s=0.2)
    breaker.suspect("connection pool cleared")
    assert breaker.closed and breaker.in_doubt
    while breaker.in_doubt:  # two probes of 0.2 s, no answer
        await asyncio.wait_for(breaker.settled(), 5.0)
    assert not breaker.closed and breaker.opened == 1
    await breaker.close()


async def test_a_probe_answered_while_the_loop_was_stalled_is_an_answer() -> None:
    loop = asyncio.get_running_loop()

    async def answered_during_a_stall() -> None:
        answer = loop.create_future()
        loop.call_later(0.05, answer.set_result, None)  # the store answers in time...
        loop.call_later(0.01, burn_cpu, 0.3)  # ...while the process is busy past the deadline
        await answer
        for _ in range(5):  # read as a driver reads it: a few steps of the loop
            await asyncio.sleep(0)

    breaker = StoreBreaker(name="mongodb", probe=answered_during_a_stall, probe_timeout_s=0.2)
    for _ in range(2):  # two in a row would open it, were they taken for failures
        breaker.suspect("connection pool cleared")
        await asyncio.wait_for(breaker.settled(), 5.0)
        while breaker.in_doubt:
            await asyncio.wait_for(breaker.settled(), 5.0)
    assert breaker.closed and breaker.opened == 0
    await breaker.close()


async def test_an_open_breaker_probes_until_the_store_answers() -> None:
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


async def test_a_probe_on_its_way_when_the_breaker_opened_does_not_close_it() -> None:
    """A store going down may still answer a probe sent before the evidence came in."""
    probe = HeldProbe()
    breaker = StoreBreaker(name="mongodb", probe=probe.ping, probe_every_s=60, clock=Clock())
    breaker.suspect("connection pool cleared")
    await asyncio.wait_for(probe.asked.wait(), 5.0)
    breaker.call_failed("call: AutoReconnect", proves_down=True)
    breaker.checked(False, "heartbeat: AutoReconnect")
    assert not breaker.closed
    await probe.answer(True)
    assert not breaker.closed
    await breaker.close()


async def test_only_changes_of_the_monitor_verdict_count() -> None:
    probe = HeldProbe()
    breakers = StoreBreakers(
        {"mongodb": StoreBreaker(name="mongodb", probe=probe.ping, probe_every_s=60)}
    )
    breakers.observe({"mongodb": state("mongodb", True)})
    breakers["mongodb"].trip("AutoReconnect")
    # a monitor round that still says "up" (its probe ran before the failure) changes nothing
    breakers.observe({"mongodb": state("mongodb", True), "redis": state("redis", False)})
    assert not breakers["mongodb"].closed
    breakers.observe({"mongodb": state("mongodb", False)})
    assert not breakers["mongodb"].closed
    breakers.observe({"mongodb": state("mongodb", True)})  # down -> up: closes
    assert breakers["mongodb"].closed
    breakers.observe({"mongodb": state("mongodb", False)})  # up -> down: a failed check
    assert breakers["mongodb"].closed and breakers["mongodb"].in_doubt
    await probe.answer(False)  # confirmed by the breaker's own probe
    assert not breakers["mongodb"].closed
    await breakers.close()
