"""Ingestion tasks in MongoDB, only through ScopedCollection.

A task document holds its state, its progress and, until it is final, the
items to write: one compressed BSON blob (point vectors packed as float32),
so the scope checks of ScopedCollection see one value rather than walking
thousands of item fields. The state machine is
PENDING -> IN_PROGRESS -> COMPLETED | FAILED | CANCELED.

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

import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import bson

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope, ScopedCollection
from storage.backends.tracing import trace_context
from storage.backends.work_queue import WorkQueue
from storage.core.clock import utc_now
from storage.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, Reason
from storage.core.ids import TIME_ORDERED_BODY, prefixed_id_re, time_ordered_id
from storage.core.pages import decode_page_token, page_of
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

TASK_STATES = ("pending", "in_progress", "completed", "failed", "canceled")
FINAL_STATES = frozenset({"completed", "failed", "canceled"})
TASK_ID_RE = prefixed_id_re("task", length=TIME_ORDERED_BODY)
_EVENT_TYPES = {
    "completed": "task.completed",
    "failed": "task.failed",
    "canceled": "task.canceled",
}
_ITEMS = {"items": 0, "event": 0}


def pack_vector(vector: Sequence[float]) -> bytes:
    """float32, little endian: 4 bytes a value (BSON arrays would take 13 or more)."""
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(packed: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(packed) // 4}f", packed))


def _pack_items(documents: Sequence[DocumentItem], points: Sequence[PointItem]) -> bytes:
    raw = bson.encode(
        {
            "documents": [
                {"id": d.document_id, "body": d.body, "metadata": d.metadata} for d in documents
            ],
            "points": [
                {"id": p.point_id, "vector": pack_vector(p.vector), "payload": p.payload}
                for p in points
            ],
        }
    )
    return zlib.compress(raw, 1)


def _unpack_items(blob: bytes) -> tuple[list[DocumentItem], list[PointItem]]:
    raw = bson.decode(zlib.decompress(blob))
    return (
        [
            DocumentItem(d["id"], d.get("body") or {}, d.get("metadata") or {})
            for d in raw["documents"]
        ],
        [
            PointItem(p["id"], unpack_vector(p["vector"]), p.get("payload") or {})
            for p in raw["points"]
        ],
    )


@dataclass(frozen=True, slots=True)
class DocumentItem:
    document_id: str
    body: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PointItem:
    point_id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TaskError:
    code: str  # a google.rpc.Code name
    message: str
    item: str = ""

    def to_doc(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "item": self.item}


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    state: str
    items_total: int
    items_done: int
    error: TaskError | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # the W3C trace context of the submitting call, which the task's event carries
    trace: Mapping[str, str] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def _record(doc: Mapping[str, Any]) -> TaskRecord:
    error = doc.get("error")
    return TaskRecord(
        task_id=doc["task_id"],
        state=doc["state"],
        items_total=int(doc["items_total"]),
        items_done=int(doc.get("items_done", 0)),
        error=TaskError(error["code"], error["message"], error.get("item", "")) if error else None,
        cancel_requested=bool(doc.get("cancel_requested")),
        attempts=int(doc.get("attempts", 0)),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        trace=doc.get("trace") or {},
    )


def task_event_data(namespace_id: str, record: TaskRecord) -> dict[str, Any]:
    """What a task event says: public ids and the outcome, never internal ids or items."""

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat(timespec="milliseconds")

    return {
        "task_id": record.task_id,
        "namespace_id": namespace_id,
        "state": record.state,
        "items_total": record.items_total,
        "items_done": record.items_done,
        "error": record.error.to_doc() if record.error else None,
        "create_time": iso(record.created_at),
        "end_time": iso(record.finished_at),
    }


@dataclass(frozen=True, slots=True)
class RunState:
    """What a worker learns when it takes a claimed task in hand."""

    record: TaskRecord
    documents: list[DocumentItem] = field(default_factory=list)
    points: list[PointItem] = field(default_factory=list)
    # the event of a task that is final already, to hand to the outbox (again: idempotent)
    final_event: Event | None = None


Progress = Literal["ok", "cancel", "lost"]


def _check_task_id(task_id: str) -> str:
    if not TASK_ID_RE.match(task_id):
        raise InvalidArgumentError("task_id is malformed (expected task_...)", field="task_id")
    return task_id


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
            "items": _pack_items(documents, points),
        }
        trace = trace_context()
        if trace:
            doc["trace"] = trace
        await self._collection(scope).insert_one(doc)
        await self._queue.release("task", task_id)
        return _record(doc)

    async def get(self, scope: Scope, task_id: str) -> TaskRecord:
        doc = await self._collection(scope).find_one(
            {"task_id": _check_task_id(task_id)}, projection=_ITEMS
        )
        if doc is None:
            raise NotFoundError("task not found")
        return _record(doc)

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
            query, sort=[("task_id", -1)], limit=page_size + 1, projection=_ITEMS
        )
        return page_of(docs, page_size=page_size, kind="task", key="task_id", build=_record)

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
                    {"task_id": task_id, "state": "pending"}, update, projection=_ITEMS
                )
                if doc is not None:
                    # the task's row is due: a worker hands the event to the outbox
                    await self._queue.release("task", task_id)
                    return _record(doc)
            else:
                doc = await collection.find_one_and_update(
                    {"task_id": task_id, "state": "in_progress"},
                    {"$set": {"cancel_requested": True, "updated_at": self._now()}},
                    projection=_ITEMS,
                )
                if doc is not None:
                    return _record(doc)
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
            record = _record(doc)
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
                projection=_ITEMS,
            )
            if updated is None:
                continue  # canceled or finished in between: look again
            documents, points = _unpack_items(doc["items"])
            return RunState(record=_record(updated), documents=documents, points=points)
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
            _EVENT_TYPES[state],
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
