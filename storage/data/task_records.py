"""Ingestion tasks as values: their states and records, their items packed into one blob,
and what a worker and a task event see of them. No I/O: the store is storage/data/tasks.py."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import bson

from storage.core.errors import InvalidArgumentError
from storage.core.ids import TIME_ORDERED_BODY, prefixed_id_re
from storage.webhooks.outbox import Event

__all__ = [
    "EVENT_TYPES",
    "FINAL_STATES",
    "TASK_ID_RE",
    "TASK_STATES",
    "WITHOUT_ITEMS",
    "DocumentItem",
    "PointItem",
    "Progress",
    "RunState",
    "TaskError",
    "TaskRecord",
    "check_task_id",
    "pack_items",
    "pack_vector",
    "task_event_data",
    "task_record",
    "unpack_items",
    "unpack_vector",
]

TASK_STATES = ("pending", "in_progress", "completed", "failed", "canceled")
FINAL_STATES = frozenset({"completed", "failed", "canceled"})
TASK_ID_RE = prefixed_id_re("task", length=TIME_ORDERED_BODY)
EVENT_TYPES = {
    "completed": "task.completed",
    "failed": "task.failed",
    "canceled": "task.canceled",
}
WITHOUT_ITEMS = {"items": 0, "event": 0}


def pack_vector(vector: Sequence[float]) -> bytes:
    """float32, little endian: 4 bytes a value (BSON arrays would take 13 or more)."""
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(packed: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(packed) // 4}f", packed))


def pack_items(documents: Sequence[DocumentItem], points: Sequence[PointItem]) -> bytes:
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


def unpack_items(blob: bytes) -> tuple[list[DocumentItem], list[PointItem]]:
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


def task_record(doc: Mapping[str, Any]) -> TaskRecord:
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


def check_task_id(task_id: str) -> str:
    if not TASK_ID_RE.match(task_id):
        raise InvalidArgumentError("task_id is malformed (expected task_...)", field="task_id")
    return task_id
