"""One loop per kind of work: claim due rows while a worker slot is free, run them.

Idle loops sleep until the next row is due, at most `poll_s` (other replicas
add work too), and wake at once when this process adds work (its `Wakeup`) or
one of its handlers finishes (it may have rescheduled its row). While MongoDB
is known to be down (its breaker is open) a loop claims nothing: it waits for
the breaker to close instead of sending claims that would wait for timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from storage.backends.breaker import StoreBreaker
from storage.backends.work_queue import Claim, WorkQueue
from storage.core.clock import utc_now

__all__ = ["QueueRunner", "Wakeup"]


class Wakeup:
    """Cuts one runner's idle sleep short. Made before the runner and before the code that
    adds its work (the outbox, servicers), which get `wake`: neither needs the other."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Up to `seconds`, less when woken; a wake-up that came meanwhile is used up."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=seconds)
        self._event.clear()


class QueueRunner:
    def __init__(
        self,
        *,
        kind: str,
        queue: WorkQueue,
        handle: Callable[[Claim], Awaitable[None]],
        concurrency: int,
        lease: timedelta,
        poll_s: float,
        logger: logging.Logger,
        wakeup: Wakeup | None = None,
        store: StoreBreaker | None = None,
    ) -> None:
        self.kind = kind
        self._queue = queue
        self._handle = handle
        self._concurrency = concurrency
        self._lease = lease
        self._poll_s = poll_s
        self._log = logger
        self._wakeup = wakeup or Wakeup()
        self._store = store  # the breaker of the queue's store
        self._running: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        if self._concurrency <= 0:
            return
        slots = asyncio.Semaphore(self._concurrency)
        try:
            while True:
                if self._store is not None and not self._store.closed:
                    await self._store.wait_closed(self._poll_s)
                    continue
                await slots.acquire()
                try:
                    claim = await self._queue.claim(self.kind, lease=self._lease)
                except Exception as exc:  # a store hiccup must not kill the loop
                    slots.release()
                    self._log.warning("could not claim %s work: %s", self.kind, type(exc).__name__)
                    await self._wakeup.sleep(self._poll_s)
                    continue
                if claim is None:
                    slots.release()
                    await self._wakeup.sleep(await self._until_next_due())
                    continue
                task = asyncio.create_task(self._run_one(claim, slots), name=f"{self.kind}-work")
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        finally:
            for task in list(self._running):
                task.cancel()
            for task in list(self._running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run_one(self, claim: Claim, slots: asyncio.Semaphore) -> None:
        try:
            await self._handle(claim)
        except asyncio.CancelledError:
            # shutting down: hand the row back so another replica need not wait for the lease
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.retry_at(claim, utc_now()), timeout=2.0)
            raise
        except Exception:
            # the row stays leased and becomes due again when the lease runs out
            self._log.exception("%s work %s failed", self.kind, claim.ref)
        finally:
            slots.release()
            self._wakeup.wake()  # it may have rescheduled its row sooner than the loop sleeps

    async def _until_next_due(self) -> float:
        try:
            due = await self._queue.next_due(self.kind)
        except Exception:
            return self._poll_s
        if due is None:
            return self._poll_s
        return min(self._poll_s, max(0.01, (due - utc_now()).total_seconds()))
