"""Bounded load for fault tests: workers calling the server, every call timed and its
status kept, so a test can ask what happened in a window (status counts, p99 latency)
and when calls succeeded again after a fault; and busy processes that keep every core
of the machine saturated meanwhile (a shared, noisy CI host)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc

__all__ = ["Load", "Sample", "Window", "burn_cpu", "busy_cores", "percentile"]


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # time.monotonic()
    seconds: float
    code: str
    worker: int
    details: str = ""  # a refusal's status message

    @property
    def ended(self) -> float:
        return self.started + self.seconds


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass(frozen=True, slots=True)
class Window:
    """The calls that started between two moments."""

    samples: tuple[Sample, ...]

    @property
    def codes(self) -> Counter[str]:
        return Counter(s.code for s in self.samples)

    def p99_s(self) -> float:
        return percentile([s.seconds for s in self.samples], 99)

    def slowest_s(self) -> float:
        return max((s.seconds for s in self.samples), default=0.0)


@dataclass
class Load:
    """`workers` loops, each awaiting `call(worker)` then pausing `pause_s`; a call's
    status is "OK" or the grpc code's name, "TIMEOUT" for an exception of another kind."""

    call: Callable[[int], Awaitable[object]]
    workers: int
    pause_s: float = 0.01
    samples: list[Sample] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.workers)]

    async def stop(self) -> None:
        """Each worker finishes the call it is making (so every call the server answered is
        counted), then stops."""
        self._stopping = True
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, worker: int) -> None:
        while not self._stopping:
            started = time.monotonic()
            details = ""
            try:
                await self.call(worker)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code, details = error.code().name, error.details() or ""
            except Exception as error:  # a client-side timeout or a broken channel
                code = type(error).__name__
            elapsed = time.monotonic() - started
            self.samples.append(Sample(started, elapsed, code, worker, details))
            await asyncio.sleep(self.pause_s)

    def window(self, start: float, end: float) -> Window:
        return Window(tuple(s for s in self.samples if start <= s.started < end))

    def split_at_first(self, start: float, end: float, *, details: str) -> tuple[Window, Window]:
        """The calls started between two moments, split per worker at the moment the first of
        its calls whose status message contains `details` came back (e.g. the first refusal
        of a circuit breaker): (the calls started before, those started from then on)."""
        first: dict[int, float] = {}
        for s in self.window(start, end).samples:
            if details in s.details:
                first[s.worker] = min(first.get(s.worker, end), s.ended)
        calls = self.window(start, end).samples
        return (
            Window(tuple(s for s in calls if s.started < first.get(s.worker, end))),
            Window(tuple(s for s in calls if s.started >= first.get(s.worker, end))),
        )

    def recovered_at(self, since: float, *, workers: range | None = None) -> float | None:
        """When, after `since`, every worker (or those given) had a call succeed: the
        latest of their first successes (time.monotonic()), None if one never did."""
        firsts = []
        for worker in workers if workers is not None else range(self.workers):
            done = [
                s.started + s.seconds
                for s in self.samples
                if s.worker == worker and s.code == "OK" and s.started >= since
            ]
            if not done:
                return None
            firsts.append(min(done))
        return max(firsts)


@contextlib.contextmanager
def busy_cores(processes: int = 2) -> Iterator[None]:
    """`processes` Python processes spinning in a loop (one per core of a 2-core CI machine),
    killed on the way out whatever happens."""
    spinning: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            spinning.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def burn_cpu(seconds: float) -> None:
    """Keep this thread busy computing for `seconds`: on the event loop's thread, a CPU spike
    of the process itself (a heavy request, a long collection), during which no timer, reply
    or heartbeat of the loop is handled."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass
