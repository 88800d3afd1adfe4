"""Deep health: each backing store is probed periodically, with a timeout.

The monitor keeps the last state of each dependency (up, latency, error type)
and calls `on_change` whenever one flips, so the server can turn the
grpc.health.v1 status of the services that need it NOT_SERVING (load
balancers then route around this instance) and back. A dependency that is down
is logged when first seen (at the first check too) and again every
`repeat_log_s` while it stays down, never once per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from storage.backends.deadlines import within
from storage.backends.failures import proves_unreachable
from storage.core.clock import utc_now

__all__ = ["DependencyMonitor", "DependencyState"]

_LOG = logging.getLogger("meshgate.health")


@dataclass(frozen=True, slots=True)
class DependencyState:
    name: str
    up: bool
    latency_s: float
    checked_at: datetime
    error: str = ""
    # the failure itself shows the store unreachable (a refused or lost connection), not
    # merely slow to answer: the breakers take only that as evidence (storage/backends/breaker.py)
    unreachable: bool = False


class DependencyMonitor:
    def __init__(
        self,
        *,
        probes: Mapping[str, Callable[[], Awaitable[object]]],
        interval_s: float,
        timeout_s: float,
        on_change: Callable[[Mapping[str, DependencyState]], Awaitable[None]],
        repeat_log_s: float = 30.0,
        where: Mapping[str, str] | None = None,
    ) -> None:
        self._probes = dict(probes)
        self._interval = interval_s
        self._timeout = timeout_s
        self._on_change = on_change
        self._repeat_log_s = repeat_log_s
        self._where = dict(where or {})
        # when each dependency went down, and when that was last logged (monotonic)
        self._down_since: dict[str, float] = {}
        self._logged_at: dict[str, float] = {}
        self.states: dict[str, DependencyState] = {}

    async def _probe(self, name: str, probe: Callable[[], Awaitable[object]]) -> DependencyState:
        started = time.perf_counter()
        try:
            await within(probe(), self._timeout)
            return DependencyState(name, True, time.perf_counter() - started, utc_now())
        except Exception as exc:  # any failure means down; only its type is kept (no secrets)
            return DependencyState(
                name,
                False,
                time.perf_counter() - started,
                utc_now(),
                type(exc).__name__,
                proves_unreachable(exc),
            )

    async def check_once(self) -> Mapping[str, DependencyState]:
        results = await asyncio.gather(*(self._probe(n, p) for n, p in self._probes.items()))
        changed = any(
            self.states.get(s.name, s).up != s.up or s.name not in self.states for s in results
        )
        for state in results:
            self._log(state)
            self.states[state.name] = state
        if changed:
            await self._on_change(self.states)
        return self.states

    def _log(self, state: DependencyState) -> None:
        name = state.name
        where = f" at {self._where[name]}" if name in self._where else ""
        now = time.monotonic()
        if state.up:
            if self._down_since.pop(name, None) is not None:
                self._logged_at.pop(name, None)
                _LOG.info("dependency %s%s is up again", name, where)
            return
        since = self._down_since.setdefault(name, now)
        last = self._logged_at.get(name)
        if last is None:
            _LOG.error("dependency %s%s is down (%s)", name, where, state.error)
        elif now - last >= self._repeat_log_s:
            _LOG.error(
                "dependency %s%s is still down after %.0fs (%s)",
                name,
                where,
                now - since,
                state.error,
            )
        else:
            return
        self._logged_at[name] = now

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)
