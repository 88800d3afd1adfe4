"""Running ingestion tasks: claimed from the work queue, leased, fenced, finished once.

One claimed task at a time per worker slot. While it runs, a heartbeat renews
the lease every third of its length; if the lease is lost (this process
stalled longer than the lease and another worker took the task over), the
run is cancelled and its writes are fenced out by the task's token. Items are
written in chunks, each followed by a progress update that also notices
cancellation requests.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from server.workers.metrics import WorkMetrics
from storage.backends.breaker import StoreBreaker
from storage.backends.failures import backend_unavailable, status_name
from storage.backends.scoped import Scope
from storage.backends.work_queue import Claim, WorkQueue
from storage.core.clock import utc_now
from storage.core.errors import InvalidArgumentError, MeshgateError
from storage.data.documents import DocumentStore
from storage.data.tasks import RunState, TaskError, TaskStore
from storage.data.vectors import VectorStore, check_vector
from storage.webhooks.outbox import EventOutbox

__all__ = ["TaskWorker"]

DOCUMENT_CHUNK = 50
POINT_CHUNK = 128
MAX_RETRY_DELAY_S = 60.0


@dataclass(frozen=True, slots=True)
class _Outcome:
    state: str
    items_done: int
    error: TaskError | None = None


class _LeaseLostError(Exception):
    """Another worker owns the task now; stop without writing anything more."""


class _RetryLaterError(Exception):
    """A store failed in a way that may pass; the task is tried again later."""


class TaskWorker:
    def __init__(
        self,
        *,
        tasks: TaskStore,
        queue: WorkQueue,
        documents: DocumentStore,
        vectors: VectorStore,
        outbox: EventOutbox,
        metrics: WorkMetrics,
        lease: timedelta,
        max_attempts: int,
        logger: logging.Logger,
        vector_store: StoreBreaker | None = None,
    ) -> None:
        self._tasks = tasks
        self._queue = queue
        self._documents = documents
        self._vectors = vectors
        self._outbox = outbox
        self._metrics = metrics
        self._lease = lease
        self._max_attempts = max_attempts
        self._log = logger
        self._vector_store = vector_store  # Qdrant's breaker: no upserts while it is down

    async def handle(self, claim: Claim) -> None:
        scope = claim.scope
        state = await self._tasks.begin(scope, claim.ref, token=claim.token)
        if state is None:  # never written (its submission failed) or its namespace is gone
            await self._queue.done(claim)
            return
        if state.record.final:  # finished before a crash, or canceled while pending
            if state.final_event is not None:
                await self._outbox.publish_event(scope, state.final_event, caller_retries=True)
            await self._queue.done(claim)
            return
        record = state.record
        if record.attempts > self._max_attempts:
            outcome = _Outcome(
                "failed",
                record.items_done,
                TaskError(
                    "UNAVAILABLE",
                    f"gave up after {self._max_attempts} attempts: the task's worker stopped"
                    " each time",
                ),
            )
        elif record.cancel_requested:
            outcome = _Outcome("canceled", record.items_done)
        else:
            try:
                qdrant = self._vector_store
                if state.points and qdrant is not None and not qdrant.closed:
                    raise _RetryLaterError  # Qdrant is known to be down: later
                outcome = await self._run_leased(claim, state)
            except _LeaseLostError:
                self._log.warning("task %s: lease lost, another worker continues", claim.ref)
                return
            except _RetryLaterError:
                delay = min(MAX_RETRY_DELAY_S, 2.0**record.attempts)
                self._metrics.task_retries += 1
                await self._queue.retry_at(claim, utc_now() + timedelta(seconds=delay))
                return
        await self._finish(claim, state, outcome)

    async def _finish(self, claim: Claim, state: RunState, outcome: _Outcome) -> None:
        event = await self._tasks.finish(
            claim.scope,
            state.record,
            token=claim.token,
            state=outcome.state,
            items_done=outcome.items_done,
            error=outcome.error,
        )
        if event is None:
            self._log.warning("task %s: lease lost before its final state", claim.ref)
            return
        if outcome.state == "completed":
            self._metrics.tasks_completed += 1
        elif outcome.state == "failed":
            self._metrics.tasks_failed += 1
        else:
            self._metrics.tasks_canceled += 1
        # the task's row is held until the event is out: a crash here publishes it again
        await self._outbox.publish_event(claim.scope, event, caller_retries=True)
        await self._queue.done(claim)

    async def _run_leased(self, claim: Claim, state: RunState) -> _Outcome:
        """The run, with a heartbeat that renews the lease and stops the run if it is lost."""
        run = asyncio.create_task(self._run(claim, state))
        lost = asyncio.Event()

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self._lease.total_seconds() / 3)
                try:
                    renewed = await self._queue.renew(claim, lease=self._lease)
                except Exception as exc:  # the store may come back before the lease runs out
                    self._log.warning(
                        "task %s: could not renew its lease: %s", claim.ref, type(exc).__name__
                    )
                    continue
                if not renewed:
                    lost.set()
                    run.cancel()
                    return

        beat = asyncio.create_task(heartbeat())
        try:
            return await run
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if lost.is_set() and (current is None or not current.cancelling()):
                raise _LeaseLostError from None
            raise
        finally:
            beat.cancel()
            run.cancel()

    async def _run(self, claim: Claim, state: RunState) -> _Outcome:
        scope, task_id, token = claim.scope, claim.ref, claim.token
        done = state.record.items_done
        n_docs = len(state.documents)
        try:
            if state.points:
                # before anything is written: the store exists and every vector fits it
                config = await self._vectors.config(scope)
                for i, point in enumerate(state.points):
                    try:
                        check_vector(
                            point.vector, config.dimension, what=f"point {point.point_id!r}"
                        )
                    except InvalidArgumentError as exc:
                        return _Outcome(
                            "failed",
                            done,
                            TaskError("INVALID_ARGUMENT", exc.message, f"points[{i}]"),
                        )
            writer = task_id
            for start in range(done, n_docs, DOCUMENT_CHUNK):
                for index in range(start, min(start + DOCUMENT_CHUNK, n_docs)):
                    item = state.documents[index]
                    try:
                        await self._documents.ingest(
                            scope,
                            writer=writer,
                            document_id=item.document_id,
                            body=item.body,
                            metadata=item.metadata,
                        )
                    except MeshgateError as exc:
                        return _Outcome(
                            "failed",
                            index,
                            TaskError(status_name(exc), exc.message, f"documents[{index}]"),
                        )
                done = min(start + DOCUMENT_CHUNK, n_docs)
                if done < state.record.items_total and (
                    stop := await self._progress(scope, task_id, token, done)
                ):
                    return stop
            first_point = max(0, done - n_docs)
            for start in range(first_point, len(state.points), POINT_CHUNK):
                chunk = state.points[start : start + POINT_CHUNK]
                try:
                    await self._vectors.upsert(
                        scope, [(p.point_id, p.vector, p.payload) for p in chunk]
                    )
                except MeshgateError as exc:
                    return _Outcome(
                        "failed",
                        n_docs + start,
                        TaskError(status_name(exc), exc.message, f"points[{start}]"),
                    )
                done = n_docs + start + len(chunk)
                if done < state.record.items_total and (
                    stop := await self._progress(scope, task_id, token, done)
                ):
                    return stop
        except MeshgateError as exc:
            return _Outcome("failed", done, TaskError(status_name(exc), exc.message))
        except (_LeaseLostError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if state.record.attempts < self._max_attempts:
                if not backend_unavailable(exc):
                    self._log.exception(
                        "task %s: attempt %d failed", task_id, state.record.attempts
                    )
                raise _RetryLaterError from None
            self._log.exception("task %s: last attempt failed", task_id)
            code = status_name(exc)
            message = (
                "a backing store stayed unavailable" if code == "UNAVAILABLE" else "internal error"
            )
            return _Outcome(
                "failed",
                done,
                TaskError(code, f"{message}; gave up after {self._max_attempts} attempts"),
            )
        return _Outcome("completed", done)

    async def _progress(self, scope: Scope, task_id: str, token: str, done: int) -> _Outcome | None:
        answer = await self._tasks.progress(scope, task_id, token=token, done=done)
        if answer == "lost":
            raise _LeaseLostError
        if answer == "cancel":
            return _Outcome("canceled", done)
        return None
