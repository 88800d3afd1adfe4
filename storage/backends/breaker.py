"""Circuit breakers: whether a store is known to be down, so work that needs it fails fast.

A call that waits for an unreachable MongoDB waits for the driver's timeouts
(server selection, `MESHGATE_BACKEND_TIMEOUT_S`) before it fails, and every
call behind it waits as long. A breaker per store turns that into one wait:
while it is open, calls that need the store are refused at once with a retry
delay (interceptors/availability.py), and background work that needs it waits
instead of trying (`wait_closed`).

It opens on evidence, never on a hint alone (`OutageEvidence` is the rule):
two signs in a row that the store cannot be reached, with no answer from it in
between. A sign is

- a refused, reset or closed connection (`failures.proves_unreachable`), seen
  by a call (it counts for `call_failure_window_s`), by the MongoDB driver's
  heartbeat or by the dependency monitor's probe;
- or the breaker's own probe (a ping, never a caller's request) left without
  an answer for its timeout (`deadlines.within`: time the event loop spent
  stalled past the deadline does not count, since no answer could be read).

Everything else is a hint: the MongoDB driver clearing its connection pool,
and timeouts, server-selection timeouts, a paused pool or operations the
driver cancelled. A busy host causes each of them while the store is up (a
heartbeat that misses its deadline makes the driver clear its pool and cancel
the calls in flight), so they must not turn a CPU spike into an outage. A hint
starts a probe at once and refuses nothing. During a real outage the signs
come within milliseconds: the calls and the heartbeat on the lost connections
fail, and the driver's heartbeat, retried at once, finds the connection refused.

While a hint is being checked, calls that need the store wait for the answer
(`settled`, at most the probe's timeout) instead of going to the driver: if the
store is up they go on as soon as the probe answers (a call would have waited
as long for the driver to find the store again), and if it is down they are
refused as soon as the breaker opens, instead of waiting for the driver's
timeouts.

While open, the store is probed every `probe_every_s`, and the breaker closes
on the first probe started after it opened that answers (a probe already on
its way may have been answered by a store that is going down): traffic
resumes within a probe interval of the store's return, without waiting for
the monitor's next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from storage.backends.deadlines import DeadlinePassed, within
from storage.backends.failures import failed_store, proves_unreachable
from storage.backends.health import DependencyState

__all__ = ["OutageEvidence", "StoreBreaker", "StoreBreakers"]

_LOG = logging.getLogger("meshgate.health")


class OutageEvidence:
    """The decision rule of a breaker, without I/O or tasks: whether what was seen of a
    store says it is down. Each method returns True when the breaker must open.

    Evidence is a failed check, or a call that failed in a way only an unreachable store
    causes; `needed` pieces of it with no answer from the store in between open the breaker.
    A failed check stands until the store answers; a call's failure counts for `window_s`
    (calls fail together when a store goes away, and one stray failure long ago says
    nothing about now)."""

    def __init__(
        self,
        *,
        needed: int = 2,
        window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._needed = needed
        self._window = window_s
        self._clock = clock
        # when the last calls that proved the store unreachable failed (older ones never count)
        self._call_failures: deque[float] = deque(maxlen=needed)
        self._failed_checks = 0

    def _enough(self) -> bool:
        now = self._clock()
        recent = sum(1 for at in self._call_failures if now - at <= self._window)
        return self._failed_checks + recent >= self._needed

    def call_failed(self) -> bool:
        """A call failed in a way only an unreachable store causes."""
        self._call_failures.append(self._clock())
        return self._enough()

    def check_failed(self) -> bool:
        """A check found the store unreachable, or had no answer in time."""
        self._failed_checks += 1
        return self._enough()

    def check_passed(self) -> None:
        """The store answered: what was seen before counts no more."""
        self._failed_checks = 0
        self._call_failures.clear()


class StoreBreaker:
    def __init__(
        self,
        *,
        name: str,
        probe: Callable[[], Awaitable[object]],
        probe_every_s: float = 0.2,
        probe_timeout_s: float = 5.0,
        evidence_needed: int = 2,
        call_failure_window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._probe = probe
        self._every = probe_every_s
        self._timeout = probe_timeout_s
        self._clock = clock
        self.evidence = OutageEvidence(
            needed=evidence_needed, window_s=call_failure_window_s, clock=clock
        )
        # the hot path reads these two attributes and nothing else
        self.closed = True
        # a hint is being checked: calls that need the store wait for the answer (`settled`)
        self.in_doubt = False
        self._settled = asyncio.Event()
        self._settled.set()
        self._next_probe_at = 0.0
        self._probing: asyncio.Task[None] | None = None
        self._closed_again = asyncio.Event()
        self._closed_again.set()
        self.opened = 0  # how often it opened (a metric)

    def retry_after_s(self) -> float:
        """When a refused caller should try again: the next probe, at least 50 ms away."""
        return max(0.05, self._next_probe_at - self._clock())

    @staticmethod
    def _in_loop() -> bool:
        """Whether this runs on an event loop's thread: the breaker belongs to the loop, and
        a driver thread's signal is ignored."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    # -- what is seen of the store -------------------------------------------------------

    def suspect(self, reason: str) -> None:
        """A hint that the store may be down: probe it now (if no probe is on its way);
        nothing is refused."""
        if not self.closed or self._probing is not None or not self._in_loop():
            return
        _LOG.warning("%s may be unreachable (%s): probing it", self.name, reason)
        self.in_doubt = True
        self._settled.clear()
        self._next_probe_at = self._clock()
        self._probing = asyncio.create_task(self._probe_until_settled(), name=f"{self.name}-probe")

    def call_failed(self, reason: str, *, proves_down: bool) -> None:
        """A call failed because of the store: evidence if `proves_down`, else a hint."""
        if not self.closed or not self._in_loop():
            return
        if proves_down and self.evidence.call_failed():
            self._open(f"{reason}, confirming an earlier sign")
        else:
            self.suspect(reason)

    def checked(self, up: bool, reason: str = "", *, proves_down: bool = True) -> None:
        """The outcome of a check made outside the breaker (the driver's heartbeat, the
        dependency monitor): a failure is evidence if `proves_down`, else a hint. While
        open, only the breaker's own probe closes it."""
        if not self.closed or not self._in_loop():
            return
        if up:
            self.evidence.check_passed()
        elif proves_down and self.evidence.check_failed():
            self._open(f"{reason}, confirming an earlier sign")
        else:
            self.suspect(reason)

    def trip(self, reason: str) -> None:
        """Open now, whatever the evidence (tests; an operator's knowledge)."""
        if self.closed and self._in_loop():
            self._open(reason)

    # -- state changes -------------------------------------------------------------------

    def _settle(self) -> None:
        self.in_doubt = False
        self._settled.set()

    async def settled(self) -> None:
        """Until the hint being checked is settled (the probe answered, or the breaker
        opened), at most the probe's timeout: what a call would wait for the driver."""
        if self.in_doubt:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self._timeout)

    def _open(self, reason: str) -> None:
        self.closed = False
        self.opened += 1
        self._closed_again.clear()
        self._settle()
        # the next probe waits a probe interval: a store going down may still answer at once
        self._next_probe_at = self._clock() + self._every
        _LOG.error("%s is unavailable (%s): failing fast until it answers", self.name, reason)
        if self._probing is None:
            self._probing = asyncio.create_task(
                self._probe_until_settled(), name=f"{self.name}-breaker"
            )

    def reset(self) -> None:
        """The store answers again: close."""
        if self.closed:
            return
        self.closed = True
        self.evidence.check_passed()
        self._closed_again.set()
        _LOG.info("%s answers again", self.name)
        probing, self._probing = self._probing, None
        if probing is not None and probing is not asyncio.current_task():
            probing.cancel()

    async def wait_closed(self, timeout_s: float) -> bool:
        """Until the breaker is closed, at most `timeout_s`; whether it is."""
        if not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed_again.wait(), timeout_s)
        return self.closed

    # -- probing -------------------------------------------------------------------------

    async def _probe_once(self) -> str | None:
        """One probe: None if the store answered, else why not, as evidence ("…") or, for a
        failure that proves nothing, the hint "" (probe again)."""
        try:
            await within(self._probe(), self._timeout)
        except DeadlinePassed:  # no answer, and the loop was on time to read one
            return f"probe: no answer in {self._timeout:g}s"
        except Exception as exc:
            return f"probe: {type(exc).__name__}" if proves_unreachable(exc) else ""
        return None

    async def _probe_until_settled(self) -> None:
        """Probe until the question is settled: while closed (a hint), until a probe answers
        (nothing to do) or evidence confirms another sign (open); while open, every probe
        interval until one started after the opening answers (close)."""
        try:
            while True:
                await asyncio.sleep(max(0.0, self._next_probe_at - self._clock()))
                was_open = not self.closed
                failure = await self._probe_once()
                if failure is None and self.closed:
                    self.evidence.check_passed()
                    self._settle()
                    return
                if failure is None and was_open:
                    self.reset()
                    return
                if failure and self.closed and self.evidence.check_failed():
                    self._open(f"{failure}, confirming an earlier sign")
                elif not self.closed or not failure:
                    # open: the next probe in an interval; a failure that proves nothing
                    # (e.g. the pool is paused until the driver finds the store): likewise
                    self._next_probe_at = self._clock() + self._every
        finally:
            if self._probing is asyncio.current_task():
                self._probing = None
                self._settle()

    async def close(self) -> None:
        """Stop probing (at shutdown)."""
        probing, self._probing = self._probing, None
        self._settle()
        if probing is not None:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing


class StoreBreakers:
    """The breakers by store name, fed by call failures and by the dependency monitor."""

    def __init__(self, breakers: Mapping[str, StoreBreaker]) -> None:
        self.breakers = dict(breakers)
        self._monitored: dict[str, bool] = {}

    def __getitem__(self, name: str) -> StoreBreaker:
        return self.breakers[name]

    def failed(self, exc: BaseException) -> None:
        """A call failed with `exc`: if it names a store, its breaker weighs it."""
        name = failed_store(exc)
        breaker = self.breakers.get(name) if name is not None else None
        if breaker is not None:
            breaker.call_failed(f"call: {type(exc).__name__}", proves_down=proves_unreachable(exc))

    def observe(self, states: Mapping[str, DependencyState]) -> None:
        """The dependency monitor's verdicts, a check each: a store that turned down is a
        failed check (evidence if its connection was refused or lost, else a hint), one that
        turned up closes its breaker (only changes count: a breaker opened by calls is not
        closed by a probe from before the failure)."""
        for name, state in states.items():
            breaker = self.breakers.get(name)
            if breaker is None or self._monitored.get(name) == state.up:
                continue
            self._monitored[name] = state.up
            if state.up:
                breaker.reset()
                breaker.checked(True)
            else:
                reason = f"monitor: {state.error or 'probe failed'}"
                breaker.checked(False, reason, proves_down=state.unreachable)

    async def close(self) -> None:
        for breaker in self.breakers.values():
            await breaker.close()
