"""Ingestion tasks in MongoDB, only through ScopedCollection.

A task document holds its state, its progress and, until it is final, the
items to write: one compressed BSON blob (point vectors packed as float32),
so the scope checks of ScopedCollection see one value rather than walking
thousands of item fields. The state machine is
PENDING -> IN_PROGRESS -> COMPLETED | FAILED | CANCELED. The task as a value (its record,
its packed items): storage/data/task_records.py, re-exported here.

Exactly once in effect, without transactions:

- Submission reserves the task's work-queue row, writes the task, then
  releases the row (storage/backends/work_queue.py explains the pattern).
- A worker claims the row (a lease with a random token), then `begin` copies
  the token onto the task. Every later write of the worker (progress, final
  state) is conditional on that token: once another worker has re-claimed the
  task after the lease expired, the first one can no longer change it.
- Item writes are idempotent (documents are stamped with the task id, points
  are upserts), so a re-claimed task may replay items safely.
- The final state, the event it causes and the removal of the items are one
  atomic update of the task document; the event is then handed to the outbox
  and the work-queue row dropped. A crash in between leaves the row, and
  whoever claims it next publishes the embedded event again (idempotent by
  event id) before dropping the row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope, ScopedCollection
from storage.backends.tracing import trace_context
from storage.backends.work_queue import WorkQueue
from storage.core.clock import utc_now
from storage.core.errors import FailedPreconditionError, NotFoundError, Reason
from storage.core.ids import time_ordered_id
from storage.core.pages import decode_page_token, page_of
from storage.data.task_records import (
    EVENT_TYPES,
    FINAL_STATES,
    TASK_ID_RE,
    TASK_STATES,
    WITHOUT_ITEMS,
    DocumentItem,
    PointItem,
    Progress,
    RunState,
    TaskError,
    TaskRecord,
    check_task_id,
    pack_items,
    pack_vector,
    task_event_data,
    task_record,
    unpack_items,
    unpack_vector,
)
from storage.webhooks.outbox import Event, new_event

__all__ = [
    "FINAL_STATES",
    "TASK_ID_RE",
    "TASK_STATES",
    "DocumentItem",
    "PointItem",
    "RunState",
    "TaskError",
    "TaskRecord",
    "TaskStore",
    "pack_vector",
    "unpack_vector",
]


class TaskStore:
    COLLECTION = "tasks"

    def __init__(
        self, *, mongo: MongoStore, queue: WorkQueue, now: Callable[[], datetime] = utc_now
    ) -> None:
        self._mongo = mongo
        self._queue = queue
        self._now = now

    def _collection(self, scope: Scope) -> ScopedCollection:
        return self._mongo.scoped(self.COLLECTION, scope)

    # -- the API side -------------------------------------------------------------

    async def submit(
        self, scope: Scope, *, documents: Sequence[DocumentItem], points: Sequence[PointItem]
    ) -> TaskRecord:
        now = self._now()
        task_id = time_ordered_id("task", now)
        await self._queue.reserve("task", scope, task_id)
        doc = {
            "task_id": task_id,
            "state": "pending",
            "items_total": len(documents) + len(points),
            "items_done": 0,
            "error": None,
            "cancel_requested": False,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "finished_at": None,
            "items": pack_items(documents, points),
        }
        trace = trace_context()
        if trace:
            doc["trace"] = trace
        await self._collection(scope).insert_one(doc)
        await self._queue.release("task", task_id)
        return task_record(doc)

    async def get(self, scope: Scope, task_id: str) -> TaskRecord:
        doc = await self._collection(scope).find_one(
            {"task_id": check_task_id(task_id)}, projection=WITHOUT_ITEMS
        )
        if doc is None:
            raise NotFoundError("task not found")
        return task_record(doc)

    async def list_page(
        self, scope: Scope, *, states: frozenset[str], page_size: int, page_token: str
    ) -> tuple[list[TaskRecord], str]:
        """Newest first."""
        after = decode_page_token(page_token, kind="task", id_pattern=TASK_ID_RE)
        query: dict[str, Any] = {}
        if states:
            query["state"] = {"$in": sorted(states)}
        if after is not None:
            query["task_id"] = {"$lt": after}
        docs = await self._collection(scope).find(
            query, sort=[("task_id", -1)], limit=page_size + 1, projection=WITHOUT_ITEMS
        )
        return page_of(docs, page_size=page_size, kind="task", key="task_id", build=task_record)

    async def cancel(self, scope: Scope, task_id: str) -> TaskRecord:
        """PENDING: canceled now. IN_PROGRESS: flagged, the worker stops after its chunk."""
        collection = self._collection(scope)
        for _ in range(3):
            current = await self.get(scope, task_id)
            if current.final:
                raise FailedPreconditionError(f"the task is {current.state} already")
            if current.state == "pending":
                update, _ = self._final_update(
                    scope, current, state="canceled", items_done=0, error=None
                )
                doc = await collection.find_one_and_update(
                    {"task_id": task_id, "state": "pending"}, update, projection=WITHOUT_ITEMS
                )
                if doc is not None:
                    # the task's row is due: a worker hands the event to the outbox
                    await self._queue.release("task", task_id)
                    return task_record(doc)
            else:
                doc = await collection.find_one_and_update(
                    {"task_id": task_id, "state": "in_progress"},
                    {"$set": {"cancel_requested": True, "updated_at": self._now()}},
                    projection=WITHOUT_ITEMS,
                )
                if doc is not None:
                    return task_record(doc)
        raise FailedPreconditionError(
            "the task is changing state concurrently; retry", reason=Reason.CONCURRENT_CHANGE
        )

    # -- the worker side ----------------------------------------------------------

    async def begin(self, scope: Scope, task_id: str, *, token: str) -> RunState | None:
        """Take a claimed task in hand: IN_PROGRESS, fenced by `token`, attempts + 1.

        None when the task does not exist (its submission failed, or its namespace
        was deleted).
        """
        collection = self._collection(scope)
        for _ in range(3):
            doc = await collection.find_one({"task_id": task_id})
            if doc is None:
                return None
            record = task_record(doc)
            if record.final:
                event = Event.from_doc(doc["event"]) if doc.get("event") else None
                return RunState(record=record, final_event=event)
            now = self._now()
            updated = await collection.find_one_and_update(
                {"task_id": task_id, "state": {"$in": ["pending", "in_progress"]}},
                {
                    "$set": {
                        "state": "in_progress",
                        "lease_token": token,
                        "started_at": record.started_at or now,
                        "updated_at": now,
                    },
                    "$inc": {"attempts": 1},
                },
                projection=WITHOUT_ITEMS,
            )
            if updated is None:
                continue  # canceled or finished in between: look again
            documents, points = unpack_items(doc["items"])
            return RunState(record=task_record(updated), documents=documents, points=points)
        return None

    async def progress(self, scope: Scope, task_id: str, *, token: str, done: int) -> Progress:
        doc = await self._collection(scope).find_one_and_update(
            {"task_id": task_id, "lease_token": token, "state": "in_progress"},
            {"$set": {"items_done": done, "updated_at": self._now()}},
            projection={"cancel_requested": 1},
        )
        if doc is None:
            return "lost"
        return "cancel" if doc.get("cancel_requested") else "ok"

    async def finish(
        self,
        scope: Scope,
        record: TaskRecord,
        *,
        token: str,
        state: str,
        items_done: int,
        error: TaskError | None,
    ) -> Event | None:
        """The final state and its event, atomically; None if the lease was lost."""
        update, event = self._final_update(
            scope, record, state=state, items_done=items_done, error=error
        )
        matched = await self._collection(scope).update_one(
            {"task_id": record.task_id, "lease_token": token, "state": "in_progress"}, update
        )
        return event if matched else None

    def _final_update(
        self,
        scope: Scope,
        record: TaskRecord,
        *,
        state: str,
        items_done: int,
        error: TaskError | None,
    ) -> tuple[dict[str, Any], Event]:
        now = self._now()
        final = replace(
            record,
            state=state,
            items_done=items_done,
            error=error,
            updated_at=now,
            finished_at=now,
        )
        event = new_event(
            EVENT_TYPES[state],
            task_event_data(scope.namespace_id, final),
            now=now,
            trace=record.trace,
        )
        update = {
            "$set": {
                "state": state,
                "items_done": items_done,
                "error": error.to_doc() if error else None,
                "updated_at": now,
                "finished_at": now,
                "event": event.to_doc(),
            },
            "$unset": {"items": ""},
        }
        return update, event
