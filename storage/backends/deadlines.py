"""Deadlines on store calls that a stalled event loop does not break.

`asyncio.wait_for` measures its timeout on the loop's clock. When the loop is
held (a CPU spike of the process, a busy host that does not schedule it)
across the deadline, the store's answer may have arrived meanwhile, but once
the loop runs again the expired timer fires before the answer is read: the
call "times out" although the store answered in time. A limiter that takes a
timeout for an outage then falls back to its local bucket, credits fail
closed, a probe reports the store down: a CPU spike turns into an outage.

`within` is `wait_for` with that corrected: if its timer ran late (the loop
was stalled past the deadline), the store gets the time the loop lost back,
and the call fails only once a deadline passes with the loop on time. A store
that is slow while the loop runs freely still times out as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

__all__ = ["DeadlinePassed", "within"]

# a timer this late or less is on time (the loop's own jitter)
_ON_TIME_S = 0.01
# how often a late deadline is moved; a loop stalled this often has lost its measure
_MOVES = 8


class DeadlinePassed(TimeoutError):
    """No answer within the deadline, with the event loop on time when it passed."""


async def within[T](awaitable: Awaitable[T], timeout_s: float) -> T:
    """`awaitable`'s result (awaited in the caller's task, as `asyncio.wait_for` does), or
    DeadlinePassed once `timeout_s` passed with the event loop on time at the deadline (it
    is cancelled then, as by `wait_for`)."""
    loop = asyncio.get_running_loop()
    moves = _MOVES
    expired = False
    handle: asyncio.TimerHandle | None = None
    try:
        async with asyncio.timeout(None) as scope:  # it expires when `expire` says so

            def expire(deadline: float) -> None:
                nonlocal moves, expired, handle
                now = loop.time()
                late = now - deadline
                if late > _ON_TIME_S and moves > 0:
                    # stalled past the deadline: an answer may be waiting to be read
                    moves -= 1
                    handle = loop.call_at(now + late, expire, now + late)
                else:
                    expired = True
                    scope.reschedule(now)

            deadline = loop.time() + timeout_s
            handle = loop.call_at(deadline, expire, deadline)
            return await awaitable
    except TimeoutError:
        if expired:
            raise DeadlinePassed(f"no answer within {timeout_s:g}s") from None
        raise
    finally:
        if handle is not None:
            handle.cancel()
