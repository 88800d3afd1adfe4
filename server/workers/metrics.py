"""Counters of the background work, for the observability change to export.

Plain integers in one object, incremented by the workers of this process;
`queue_depth` reads the shared work queue (all replicas). No exporter here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields

__all__ = ["WorkMetrics"]


async def _no_depth() -> dict[str, dict[str, int]]:
    return {}


@dataclass
class WorkMetrics:
    tasks_completed: int = 0
    tasks_failed: int = 0
    tasks_canceled: int = 0
    # a task attempt ended early (a store was unavailable) and was rescheduled
    task_retries: int = 0
    delivery_attempts: int = 0
    # an attempt that did not get a 2xx (each retry counts)
    delivery_attempt_failures: int = 0
    deliveries_succeeded: int = 0
    deliveries_exhausted: int = 0
    # stopped early: 410 Gone, webhook disabled or removed
    deliveries_failed: int = 0
    endpoints_disabled: int = 0
    # rows per kind, {"task": {"due": n, "total": m}, ...}, across all replicas
    queue_depth: Callable[[], Awaitable[dict[str, dict[str, int]]]] = field(
        default=_no_depth, repr=False, compare=False
    )

    def task_failure_rate(self) -> float:
        """Failed tasks over finished tasks in this process (0.0 before any finished)."""
        finished = self.tasks_completed + self.tasks_failed + self.tasks_canceled
        return self.tasks_failed / finished if finished else 0.0

    def counters(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}
