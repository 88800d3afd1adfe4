"""The dependency monitor's log: a store down is named when first seen, at the first check
too, then again at a steady interval while it stays down, never once per probe."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from storage.backends.health import DependencyMonitor, DependencyState


async def test_a_store_down_from_the_start_is_logged_then_again_while_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = {"redis": False}

    async def ping() -> None:
        if not up["redis"]:
            raise ConnectionRefusedError("refused")

    async def ignore(states: Mapping[str, DependencyState]) -> None:
        pass

    monitor = DependencyMonitor(
        probes={"redis": ping},
        interval_s=0.01,
        timeout_s=1.0,
        on_change=ignore,
        repeat_log_s=0.2,
        where={"redis": "cache:6379"},
    )

    def lines() -> list[str]:  # this monitor's (the session server's log under the same name)
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "meshgate.health" and "cache:6379" in r.getMessage()
        ]

    await monitor.check_once()  # the first check: down from the start
    assert lines() == ["dependency redis at cache:6379 is down (ConnectionRefusedError)"]
    for _ in range(5):  # probes within the interval add nothing
        await monitor.check_once()
    assert len(lines()) == 1
    await asyncio.sleep(0.25)
    await monitor.check_once()
    assert lines()[1].startswith("dependency redis at cache:6379 is still down after 0s")
    assert len(lines()) == 2
    up["redis"] = True
    await monitor.check_once()
    assert lines()[2] == "dependency redis at cache:6379 is up again"
    await monitor.check_once()
    assert len(lines()) == 3
