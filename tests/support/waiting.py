"""Polling until a condition holds: for background work and for processes starting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

__all__ = ["eventually", "wait_until"]


async def eventually(
    predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 5.0, interval_s: float = 0.02
) -> float:
    """Seconds until `await predicate()` is true; fails the test after `timeout_s`."""
    started = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    failure: Callable[[], str],
) -> None:
    """Blocks until `ready()` is true (it may raise to give up early); after `timeout_s`,
    RuntimeError with `failure()` (for code outside a test too: the benchmark)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(failure())
        time.sleep(interval_s)
