"""Circuit breakers: whether a store is known to be down, so work that needs it fails fast.

A call that waits for an unreachable MongoDB waits for the driver's timeouts
(server selection, `MESHGATE_BACKEND_TIMEOUT_S`) before it fails, and every
call behind it waits as long. A breaker per store turns that into one wait:

- it opens when the driver loses a connection to the store (MongoDB's pool is
  cleared, `MongoStore.on_unreachable`: before the failing operation has even
  given up), when a call fails because the store cannot be reached (the errors
  step reports the failure, `StoreBreakers.failed`), or when the dependency
  monitor's probe finds the store down;
- while it is open, calls that need the store are refused at once with a retry
  delay (interceptors/availability.py), and background work that needs it
  waits instead of trying (`wait_closed`);
- while it is open, the store is probed every `probe_every_s` (a ping with a
  short timeout, never a caller's request), and the breaker closes on the first
  probe that answers: traffic resumes within a probe interval of the store's
  return, without waiting for the monitor's next round.

One failure opens it: the failures that count are a lost connection, a refused
connection or a server that cannot be selected, which do not happen to a
healthy store; a false alarm costs one probe interval of refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from storage.backends.failures import failed_store
from storage.backends.health import DependencyState

__all__ = ["StoreBreaker", "StoreBreakers"]

_LOG = logging.getLogger("meshgate.health")


class StoreBreaker:
    def __init__(
        self,
        *,
        name: str,
        probe: Callable[[], Awaitable[object]],
        probe_every_s: float = 0.2,
        probe_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._probe = probe
        self._every = probe_every_s
        self._timeout = probe_timeout_s
        self._clock = clock
        # the hot path reads this attribute and nothing else
        self.closed = True
        self._next_probe_at = 0.0
        self._probing: asyncio.Task[None] | None = None
        self._closed_again = asyncio.Event()
        self._closed_again.set()
        self.opened = 0  # how often it opened (a metric)

    def retry_after_s(self) -> float:
        """When a refused caller should try again: the next probe, at least 50 ms away."""
        return max(0.05, self._next_probe_at - self._clock())

    def trip(self, reason: str) -> None:
        """The store is down: open (if closed) and probe until it answers. From the event
        loop's thread only (elsewhere it does nothing)."""
        if not self.closed:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a driver thread: the breaker belongs to the loop
            return
        self.closed = False
        self.opened += 1
        self._closed_again.clear()
        # the first probe waits a probe interval: a store going down may still answer a
        # ping at once (a full suite saw a probe at once close the breaker on a stopping
        # MongoDB, whose calls then waited 4.6 s for the driver)
        self._next_probe_at = self._clock() + self._every
        _LOG.error("%s is unavailable (%s): failing fast until it answers", self.name, reason)
        self._probing = asyncio.create_task(self._probe_until_up(), name=f"{self.name}-breaker")

    def reset(self) -> None:
        """The store answers again: close."""
        if self.closed:
            return
        self.closed = True
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

    async def _probe_until_up(self) -> None:
        while not self.closed:
            await asyncio.sleep(max(0.0, self._next_probe_at - self._clock()))
            try:
                await asyncio.wait_for(self._probe(), self._timeout)
            except Exception:  # still down; only the outcome matters here
                self._next_probe_at = self._clock() + self._every
                continue
            self.reset()

    async def close(self) -> None:
        """Stop probing (at shutdown)."""
        probing, self._probing = self._probing, None
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
        """A call failed with `exc`: if it means a store cannot be reached, open its breaker."""
        name = failed_store(exc)
        breaker = self.breakers.get(name) if name is not None else None
        if breaker is not None:
            breaker.trip(type(exc).__name__)

    def observe(self, states: Mapping[str, DependencyState]) -> None:
        """The dependency monitor's verdicts: a store that turned down opens its breaker, one
        that turned up closes it (only changes count: a breaker opened by calls is not
        closed by a probe from before the failure)."""
        for name, state in states.items():
            breaker = self.breakers.get(name)
            if breaker is None or self._monitored.get(name) == state.up:
                continue
            self._monitored[name] = state.up
            if state.up:
                breaker.reset()
            else:
                breaker.trip(state.error or "probe failed")

    async def close(self) -> None:
        for breaker in self.breakers.values():
            await breaker.close()
