"""TaskService: background ingestion into the namespace in `x-namespace`.

The whole batch is validated before anything is written (INVALID_ARGUMENT
names the first bad item); what can only be known when the task runs (the
namespace's vector store and its dimension) fails the task instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from meshgate.v1 import task_service_pb2 as pb
from meshgate.v1 import task_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import names_from_proto, struct_to_dict, timestamp
from services.document_service import checked_document
from storage.core.errors import InvalidArgumentError
from storage.core.pages import page_size
from storage.data.documents import check_metadata, new_document_id
from storage.data.tasks import DocumentItem, PointItem, TaskRecord, TaskStore
from storage.data.vectors import MAX_DIMENSION, check_point_id

__all__ = ["MAX_INGESTION_BYTES", "MAX_INGESTION_ITEMS", "TaskServicer", "task_to_proto"]

MAX_INGESTION_ITEMS = 1000
MAX_INGESTION_BYTES = 4 * 1024 * 1024
_STATES = {
    "pending": pb.TASK_STATE_PENDING,
    "in_progress": pb.TASK_STATE_IN_PROGRESS,
    "completed": pb.TASK_STATE_COMPLETED,
    "failed": pb.TASK_STATE_FAILED,
    "canceled": pb.TASK_STATE_CANCELED,
}
_STATES_BACK = {v: k for k, v in _STATES.items()}


def task_to_proto(record: TaskRecord) -> pb.Task:
    return pb.Task(
        task_id=record.task_id,
        state=_STATES[record.state],
        items_total=record.items_total,
        items_done=record.items_done,
        error=pb.TaskError(
            code=record.error.code, message=record.error.message, item=record.error.item
        )
        if record.error
        else None,
        cancel_requested=record.cancel_requested,
        attempts=record.attempts,
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
        start_time=timestamp(record.started_at),
        end_time=timestamp(record.finished_at),
    )


def _states(values: list[int]) -> frozenset[str]:
    return names_from_proto(
        values,
        _STATES_BACK,
        field="states",
        refusal="states may only hold TASK_STATE_PENDING, TASK_STATE_IN_PROGRESS,"
        " TASK_STATE_COMPLETED, TASK_STATE_FAILED or TASK_STATE_CANCELED",
    )


def _documents(request: pb.SubmitIngestionRequest) -> list[DocumentItem]:
    items: list[DocumentItem] = []
    seen: set[str] = set()
    for i, document in enumerate(request.documents):
        document_id, body, metadata = checked_document(document, what=f"documents[{i}]")
        document_id = document_id or new_document_id()
        if document_id in seen:
            raise InvalidArgumentError(
                f"documents[{i}] repeats document_id {document_id!r}",
                field=f"documents[{i}].document_id",
            )
        seen.add(document_id)
        items.append(DocumentItem(document_id, body, metadata))
    return items


def _points(request: pb.SubmitIngestionRequest) -> list[PointItem]:
    items: list[PointItem] = []
    seen: set[str] = set()
    dimension: int | None = None
    for i, point in enumerate(request.points):
        what = f"points[{i}]"
        try:
            point_id = check_point_id(point.id)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{what}: {exc.message}", field=f"{what}.id") from None
        if point_id in seen:
            raise InvalidArgumentError(f"{what} repeats id {point_id!r}", field=f"{what}.id")
        seen.add(point_id)
        vector = list(point.vector)
        if not 1 <= len(vector) <= MAX_DIMENSION:
            raise InvalidArgumentError(
                f"{what}.vector must have 1-{MAX_DIMENSION} values", field=f"{what}.vector"
            )
        if dimension is None:
            dimension = len(vector)
        elif len(vector) != dimension:
            raise InvalidArgumentError(
                f"{what}.vector has {len(vector)} values; points[0] has {dimension}",
                field=f"{what}.vector",
            )
        if not all(math.isfinite(v) for v in vector):
            raise InvalidArgumentError(
                f"{what}.vector contains NaN or infinity", field=f"{what}.vector"
            )
        payload = struct_to_dict(point.payload)
        check_metadata(payload, what=f"{what}.payload")
        items.append(PointItem(point_id, vector, payload))
    return items


def _noop() -> None:
    return None


class TaskServicer(pb_grpc.TaskServiceServicer):
    def __init__(self, *, tasks: TaskStore, on_change: Callable[[], None] = _noop) -> None:
        self._tasks = tasks
        self._on_change = on_change  # wakes this process's task workers

    async def SubmitIngestion(
        self, request: pb.SubmitIngestionRequest, context: Any
    ) -> pb.SubmitIngestionResponse:
        scope = current_call.get().require_scope()
        total = len(request.documents) + len(request.points)
        if not 1 <= total <= MAX_INGESTION_ITEMS:
            raise InvalidArgumentError(
                f"a task holds 1-{MAX_INGESTION_ITEMS} items (documents and points together);"
                f" this one has {total}"
            )
        if request.ByteSize() > MAX_INGESTION_BYTES:
            raise InvalidArgumentError(
                f"the batch is larger than {MAX_INGESTION_BYTES // (1024 * 1024)} MiB; split it"
            )
        documents = _documents(request)
        points = _points(request)
        record = await self._tasks.submit(scope, documents=documents, points=points)
        self._on_change()
        return pb.SubmitIngestionResponse(task=task_to_proto(record))

    async def GetTask(self, request: pb.GetTaskRequest, context: Any) -> pb.GetTaskResponse:
        scope = current_call.get().require_scope()
        return pb.GetTaskResponse(task=task_to_proto(await self._tasks.get(scope, request.task_id)))

    async def ListTasks(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksResponse:
        scope = current_call.get().require_scope()
        records, token = await self._tasks.list_page(
            scope,
            states=_states(list(request.states)),
            page_size=page_size(request.page_size),
            page_token=request.page_token,
        )
        return pb.ListTasksResponse(
            tasks=[task_to_proto(r) for r in records], next_page_token=token
        )

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: Any
    ) -> pb.CancelTaskResponse:
        scope = current_call.get().require_scope()
        record = await self._tasks.cancel(scope, request.task_id)
        self._on_change()
        return pb.CancelTaskResponse(task=task_to_proto(record))
