"""The server's background jobs: the work runners (ingestion tasks, webhook deliveries,
interrupted event fan-outs) and the periodic loops beside them.

Every job is an asyncio task of the serving process; `RunningServer.stop`
cancels them after the drain. A failing round is logged and retried: a store
hiccup never ends a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta

from interceptors.metrics import Metrics
from server.components import Components
from server.loop_lag import LoopLag
from server.settings import Settings
from server.workers.dispatcher import DeliveryWorker, RetrySchedule
from server.workers.key_idle import IdleKeys
from server.workers.metrics import WorkMetrics
from server.workers.runner import QueueRunner
from server.workers.tasks import TaskWorker
from storage.backends.health import DependencyMonitor

__all__ = ["Background", "build_background", "export_work_metrics", "start_background"]

_LOG = logging.getLogger("meshgate.server")


@dataclass
class Background:
    """The runners of the shared work queue and the counters of their work."""

    metrics: WorkMetrics
    runners: dict[str, QueueRunner]
    # the idle-key policies, applied every `idle_check_s` (server/workers/key_idle.py)
    idle_keys: IdleKeys
    idle_check_s: float
    # how late the event loop runs (server/loop_lag.py)
    loop_lag: LoopLag
    # how often this replica signs the heads it wrote (storage/audit/checkpoints.py)
    checkpoint_interval_s: float = 60.0
    # rows per (kind, state), refreshed by a loop and read by metric scrapes
    queue_depth: dict[tuple[str, ...], float] = field(default_factory=dict)


def build_background(settings: Settings, c: Components) -> Background:
    if sum(settings.webhook_retry_schedule) < 24 * 3600:
        _LOG.warning("the webhook retry schedule spans less than a day")
    metrics = WorkMetrics(queue_depth=c.queue.depth)
    task_lease = timedelta(seconds=settings.task_lease_s)
    task_worker = TaskWorker(
        tasks=c.tasks,
        queue=c.queue,
        documents=c.documents,
        vectors=c.vectors,
        outbox=c.outbox,
        metrics=metrics,
        lease=task_lease,
        max_attempts=settings.task_max_attempts,
        logger=logging.getLogger("meshgate.tasks"),
        vector_store=c.breakers["qdrant"],
    )
    delivery_worker = DeliveryWorker(
        queue=c.queue,
        deliveries=c.deliveries,
        webhooks=c.webhooks,
        outbox=c.outbox,
        sender=c.sender,
        schedule=RetrySchedule(settings.webhook_retry_schedule, settings.webhook_jitter),
        metrics=metrics,
        logger=logging.getLogger("meshgate.webhooks"),
    )
    runners = {
        "task": QueueRunner(
            kind="task",
            queue=c.queue,
            handle=task_worker.handle,
            concurrency=settings.task_workers,
            lease=task_lease,
            poll_s=settings.work_poll_s,
            logger=logging.getLogger("meshgate.tasks"),
            wakeup=c.task_due,
            store=c.breakers["mongodb"],
        ),
        "delivery": QueueRunner(
            kind="delivery",
            queue=c.queue,
            handle=delivery_worker.handle,
            concurrency=settings.webhook_workers,
            # one attempt is bounded by the request timeout; the rest is store writes
            lease=timedelta(seconds=2 * settings.webhook_timeout_s + 1),
            poll_s=settings.work_poll_s,
            logger=logging.getLogger("meshgate.webhooks"),
            wakeup=c.delivery_due,
            store=c.breakers["mongodb"],
        ),
        "event": QueueRunner(
            kind="event",
            queue=c.queue,
            handle=c.outbox.recover,
            concurrency=1 if settings.webhook_workers else 0,
            lease=timedelta(seconds=30),
            poll_s=max(settings.work_poll_s, 5.0),
            logger=logging.getLogger("meshgate.webhooks"),
            store=c.breakers["mongodb"],
        ),
    }
    idle_keys = IdleKeys(
        organizations=c.organizations,
        idle=c.idle_keys,
        events=c.events,
        audit=c.audit,
        invalidation=c.invalidation,
    )
    return Background(
        metrics=metrics,
        runners=runners,
        idle_keys=idle_keys,
        idle_check_s=settings.key_idle_check_s,
        loop_lag=LoopLag(histogram=c.metrics.loop_lag),
        checkpoint_interval_s=settings.audit_checkpoint_interval_s,
    )


def export_work_metrics(m: Metrics, background: Background) -> None:
    work, depth = background.metrics, background.queue_depth
    m.counter_from(
        "meshgate_task_failures_total", "ingestion tasks that failed", lambda: work.tasks_failed
    )
    m.labeled_counter_from(
        "meshgate_webhook_delivery_failures_total",
        "failed webhook delivery attempts (attempt), and deliveries out of retries (exhausted)",
        lambda: {
            ("attempt",): float(work.delivery_attempt_failures),
            ("exhausted",): float(work.deliveries_exhausted),
            ("gone",): float(work.deliveries_failed),
        },
        ("outcome",),
    )
    m.counter_from(
        "meshgate_webhook_delivery_attempts_total",
        "webhook delivery attempts made by this process (each retry counts)",
        lambda: work.delivery_attempts,
    )
    m.counter_from(
        "meshgate_webhook_deliveries_succeeded_total",
        "webhook deliveries that got a 2xx",
        lambda: work.deliveries_succeeded,
    )
    m.gauge_from(
        "meshgate_event_loop_lag_max_seconds",
        "the longest event-loop lag of the last minute (see meshgate_event_loop_lag_seconds)",
        lambda: {(): background.loop_lag.max_recent()},
    )
    m.gauge_from(
        "meshgate_work_queue_depth",
        "rows in the shared work queue, by kind and state (all replicas)",
        lambda: dict(depth),
        ("kind", "state"),
    )


async def _refresh_queue_depth(background: Background) -> None:
    """The queue depth needs MongoDB: read here, in the loop, not in the scrape thread."""
    rows = await background.metrics.queue_depth()
    background.queue_depth.clear()
    background.queue_depth.update(
        {(kind, state): float(n) for kind, states in rows.items() for state, n in states.items()}
    )


async def _every(
    every_s: float,
    action: Callable[[], Awaitable[object]],
    *,
    failing: str,
    first: bool = False,
    level: int = logging.WARNING,
) -> None:
    """`action` forever, `every_s` apart (the first time at once with `first`); a failure
    is logged and the next round tries again: a store hiccup never ends the loop."""
    if not first:
        await asyncio.sleep(every_s)
    while True:
        try:
            await action()
        except Exception as exc:
            _LOG.log(level, "could not %s: %s", failing, type(exc).__name__)
        await asyncio.sleep(every_s)


async def _reseal(c: Components) -> None:
    resealed, unopened = await c.webhooks.reseal_pending()
    if resealed:
        _LOG.info("re-sealed the secrets of %d webhooks under the primary sealing key", resealed)
    if unopened:
        _LOG.warning(
            "the secrets of %d webhooks open with none of the configured sealing keys", unopened
        )


def start_background(
    c: Components, background: Background, monitor: DependencyMonitor
) -> list[asyncio.Task[None]]:
    """Every background job of a started server, each a named task."""
    jobs: dict[str, Coroutine[object, object, None]] = {
        "invalidation-bus": c.invalidation.run(),
        "last-used": _every(30.0, c.verifier.flush_last_used, failing="record key last-used times"),
        "idle-keys": _every(
            background.idle_check_s,
            background.idle_keys.run_once,
            failing="apply the idle-key policies",
        ),
        # deletions a crash interrupted: at start-up, then every minute
        "namespace-deletions": _every(
            60.0, c.purger.finish_pending, failing="finish namespace deletions", first=True
        ),
        # webhook secrets sealed under an older key move to the primary: at start-up, then
        # every minute (storage/webhooks/sealing.py)
        "webhook-reseal": _every(
            60.0, lambda: _reseal(c), failing="re-seal webhook secrets", first=True
        ),
        # kept buffered when it fails; retried next time
        "usage-flush": _every(1.0, c.flush_usage, failing="flush usage / settle credits"),
        "audit-writer": c.audit.run(),
        **(
            {
                "audit-checkpoints": _every(
                    background.checkpoint_interval_s,
                    c.checkpoints.publish_written,
                    failing="publish audit checkpoints",
                )
            }
            if c.checkpoints is not None
            else {}
        ),
        "dependency-monitor": monitor.run(),
        "loop-lag": background.loop_lag.run(),
        "queue-depth": _every(
            5.0,
            lambda: _refresh_queue_depth(background),
            failing="read the work queue depth",
            first=True,
            level=logging.DEBUG,
        ),
        **{f"{kind}-runner": runner.run() for kind, runner in background.runners.items()},
    }
    return [asyncio.create_task(job, name=name) for name, job in jobs.items()]
