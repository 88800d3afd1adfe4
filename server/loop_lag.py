"""How late the event loop runs a timer: the stall every call on this process waits behind.

A callback that holds the loop (a large message parsed in one go, a slow synchronous
call) delays every other call, health check and background job of the process. The
loop's own view is the plainest measure of that: a task sleeps `every_s` and records
how much later than asked it woke. `meshgate_event_loop_lag_seconds` is the histogram
of those delays (one observation per tick, so a stall of N seconds is one observation
of about N seconds), and `meshgate_event_loop_lag_max_seconds` the longest in the last
minute, so a stall is visible on a dashboard before a liveness probe fails.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Histogram

__all__ = ["LoopLag"]


class LoopLag:
    """Samples the loop's lag every `every_s`; keeps the last `window_s` of samples for the
    maximum (at most window_s / every_s of them)."""

    def __init__(
        self,
        *,
        histogram: Histogram,
        every_s: float = 0.1,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._histogram = histogram
        self._every = every_s
        self._window = window_s
        self._clock = clock
        self._recent: deque[tuple[float, float]] = deque(maxlen=max(1, int(window_s / every_s)))

    def record(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self._histogram.observe(lag_s)
        self._recent.append((self._clock(), lag_s))

    def max_recent(self) -> float:
        """The longest lag of the last `window_s` (0 when none was recorded). Called from
        the metrics endpoint's thread while the loop appends: `tuple()` copies the deque in
        one step under the GIL, where iterating it would see it change mid-way."""
        since = self._clock() - self._window
        return max((lag for at, lag in tuple(self._recent) if at >= since), default=0.0)

    async def run(self) -> None:
        while True:
            asked = self._clock() + self._every
            await asyncio.sleep(self._every)
            self.record(self._clock() - asked)
