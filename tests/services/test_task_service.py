"""TaskService through the real server: ingestion runs in the background, exactly once."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import document_service_pb2_grpc as doc_grpc
from meshgate.v1 import namespace_service_pb2, options_pb2
from meshgate.v1 import task_service_pb2 as pb
from meshgate.v1 import vector_service_pb2 as vec_pb
from meshgate.v1 import webhook_service_pb2 as wh_pb
from meshgate.v1 import webhook_service_pb2_grpc as wh_grpc

from server.backends import Backends
from storage.backends.work_queue import WorkQueue
from tests.support.clients import auth, rpc_error
from tests.support.namespace_clients import Tasks, Vectors, doc, point
from tests.support.tenants import MakeTenant, Tenant, scope_of
from tests.support.waiting import eventually


async def test_documents_and_points_are_ingested(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    tasks, vectors = Tasks(tenant, ns.name), Vectors(tenant, ns.name)
    await vectors.create(3)
    documents = [doc(f"d{i:03}", body={"n": i}, color="red") for i in range(120)]
    documents.append(doc(body={"generated": True}))
    points = [point(f"p{i}", [1.0, float(i), 0.5], tag="x") for i in range(300)]
    task = await tasks.submit(documents, points)
    assert task.state == pb.TASK_STATE_PENDING and task.items_total == 421
    assert task.task_id.startswith("task_") and task.create_time.seconds > 0
    final = await tasks.final(task.task_id)
    assert final.state == pb.TASK_STATE_COMPLETED, final
    assert final.items_done == 421 and final.attempts == 1 and not final.HasField("error")
    assert final.start_time.seconds > 0 and final.end_time.seconds > 0
    docs = doc_grpc.DocumentServiceStub(tenant.channel)
    got = await docs.GetDocument(doc_pb.GetDocumentRequest(document_id="d007"), metadata=tasks.md)
    assert dict(got.document.body) == {"n": 7} and got.document.revision == 1
    listed = await docs.ListDocuments(doc_pb.ListDocumentsRequest(page_size=200), metadata=tasks.md)
    assert len(listed.documents) == 121
    assert any(d.document_id.startswith("doc_") for d in listed.documents)
    found = await vectors.stub.GetPoints(
        vec_pb.GetPointsRequest(ids=["p0", "p299"]), metadata=vectors.md
    )
    assert {p.id for p in found.points} == {"p0", "p299"}
    # a second task writes the same ids again: create or replace
    again = await tasks.submit([doc("d007", body={"n": "new"})])
    assert (await tasks.final(again.task_id)).state == pb.TASK_STATE_COMPLETED
    got = await docs.GetDocument(doc_pb.GetDocumentRequest(document_id="d007"), metadata=tasks.md)
    assert dict(got.document.body) == {"n": "new"} and got.document.revision == 2


async def test_a_task_fails_before_writing_when_the_vector_store_does_not_fit(
    tenant: Tenant,
) -> None:
    ns = await tenant.namespace()
    tasks, vectors = Tasks(tenant, ns.name), Vectors(tenant, ns.name)
    await vectors.create(2)
    task = await tasks.submit([doc("kept-out")], [point("a", [1.0, 0.0, 0.0])])
    final = await tasks.final(task.task_id)
    assert final.state == pb.TASK_STATE_FAILED
    assert final.error.code == "INVALID_ARGUMENT" and final.error.item == "points[0]"
    assert "dimensions" in final.error.message and final.items_done == 0
    docs = doc_grpc.DocumentServiceStub(tenant.channel)
    listed = await docs.ListDocuments(doc_pb.ListDocumentsRequest(), metadata=tasks.md)
    assert list(listed.documents) == []


async def test_cancel(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    tasks = Tasks(tenant, ns.name)
    task = await tasks.submit([doc(f"c{i}", body={"pad": "x" * 200}) for i in range(1000)])
    canceled = await tasks.stub.CancelTask(
        pb.CancelTaskRequest(task_id=task.task_id), metadata=tasks.md
    )
    assert canceled.task.state in (pb.TASK_STATE_CANCELED, pb.TASK_STATE_IN_PROGRESS)
    final = await tasks.final(task.task_id)
    assert final.state == pb.TASK_STATE_CANCELED and final.items_done < 1000
    assert final.end_time.seconds > 0
    error = await rpc_error(
        tasks.stub.CancelTask(pb.CancelTaskRequest(task_id=task.task_id), metadata=tasks.md)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = await tasks.submit([doc("quick")])
    await tasks.final(done.task_id)
    error = await rpc_error(
        tasks.stub.CancelTask(pb.CancelTaskRequest(task_id=done.task_id), metadata=tasks.md)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_list_filters_by_state_and_pages_newest_first(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    tasks, vectors = Tasks(tenant, ns.name), Vectors(tenant, ns.name)
    ok = [await tasks.submit([doc(f"o{i}")]) for i in range(5)]
    bad = await tasks.submit(points=[point("p", [1.0])])  # no vector store: fails
    for task in [*ok, bad]:
        await tasks.final(task.task_id)
    everything = await tasks.list_ids(page_size=2)
    assert everything == [bad.task_id, *reversed([t.task_id for t in ok])]
    assert await tasks.list_ids(pb.TASK_STATE_FAILED) == [bad.task_id]
    assert await tasks.list_ids(pb.TASK_STATE_COMPLETED, page_size=3) == [
        t.task_id for t in reversed(ok)
    ]
    assert await tasks.list_ids(pb.TASK_STATE_PENDING, pb.TASK_STATE_IN_PROGRESS) == []
    assert vectors  # the namespace has no vector store on purpose


def _many(n: int) -> list[doc_pb.Document]:
    return [doc(f"m{i}") for i in range(n)]


@pytest.mark.parametrize(
    ("documents", "points", "message"),
    [
        ([], [], "1-1000 items"),
        (_many(1001), [], "1-1000 items"),
        (_many(600), [point(f"p{i}", [1.0]) for i in range(401)], "1-1000 items"),
        ([doc("bad id!")], [], "documents[0]"),
        ([doc("same"), doc("same")], [], "repeats document_id"),
        ([doc("ok"), doc("x", body={"$set": 1})], [], "documents[1].body"),
        ([doc("x", namespace_id="ns_other")], [], "reserved"),
        ([], [point("bad id!", [1.0])], "points[0]"),
        ([], [point("a", [1.0]), point("a", [2.0])], "repeats id"),
        ([], [point("a", [float("nan")])], "NaN"),
        ([], [point("a", [1.0]), point("b", [1.0, 2.0])], "points[1].vector"),
        ([], [point("a", [])], "1-4096"),
        ([], [point("a", [1.0], point_id="x")], "reserved"),
    ],
)
async def test_bad_batches_are_refused_and_nothing_is_written(
    tenant: Tenant,
    backends: Backends,
    documents: list[doc_pb.Document],
    points: list[vec_pb.Point],
    message: str,
) -> None:
    ns = await tenant.namespace()
    tasks = Tasks(tenant, ns.name)
    error = await rpc_error(tasks.submit(documents, points))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or ""), error.details()
    assert await tasks.list_ids() == []
    assert await WorkQueue(mongo=backends.mongo).rows_of(ns.namespace_id) == []


async def test_batches_over_the_message_limit_are_refused(tenant: Tenant) -> None:
    """Above 4 MiB the transport refuses (MESHGATE_MAX_MESSAGE_BYTES); SubmitIngestion would too."""
    ns = await tenant.namespace()
    tasks = Tasks(tenant, ns.name)
    big = [doc(f"b{i}", body={"blob": "y" * (250 * 1024)}) for i in range(17)]
    error = await rpc_error(tasks.submit(big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await tasks.list_ids() == []


async def test_bad_requests_and_permissions(tenant: Tenant, make_tenant: MakeTenant) -> None:
    ns = await tenant.namespace()
    other = await tenant.namespace()
    tasks = Tasks(tenant, ns.name)
    task = await tasks.submit([doc("a")])
    for call in (
        tasks.stub.ListTasks(
            pb.ListTasksRequest(states=[pb.TASK_STATE_UNSPECIFIED]), metadata=tasks.md
        ),
        tasks.stub.ListTasks(
            pb.ListTasksRequest(states=[pb.TaskState.ValueType(42)]), metadata=tasks.md
        ),
        tasks.stub.ListTasks(pb.ListTasksRequest(page_size=201), metadata=tasks.md),
        tasks.stub.ListTasks(pb.ListTasksRequest(page_token="nope"), metadata=tasks.md),
        tasks.stub.GetTask(pb.GetTaskRequest(task_id="task_bad"), metadata=tasks.md),
        tasks.stub.CancelTask(pb.CancelTaskRequest(task_id=""), metadata=tasks.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.INVALID_ARGUMENT
    # another namespace, another organization: NOT_FOUND
    elsewhere = Tasks(tenant, other.name)
    foreign_org = await make_tenant()
    foreign = Tasks(foreign_org, ns.name)
    for stub, md in ((elsewhere.stub, elsewhere.md), (foreign.stub, foreign.md)):
        error = await rpc_error(stub.GetTask(pb.GetTaskRequest(task_id=task.task_id), metadata=md))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await elsewhere.list_ids() == []
    # READ may look, not submit or cancel; WRITE may submit
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    as_reader = Tasks(tenant, ns.name, reader.secret)
    assert (await as_reader.get(task.task_id)).task_id == task.task_id
    error = await rpc_error(as_reader.submit([doc("r")]))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await rpc_error(
        as_reader.stub.CancelTask(pb.CancelTaskRequest(task_id=task.task_id), metadata=as_reader.md)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    writer = await tenant.key(options_pb2.PERMISSION_WRITE)
    await Tasks(tenant, ns.name, writer.secret).submit([doc("w")])
    # no namespace header
    error = await rpc_error(
        tasks.stub.SubmitIngestion(
            pb.SubmitIngestionRequest(documents=[doc("z")]), metadata=auth(tenant.admin)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_deleting_the_namespace_removes_tasks_webhooks_and_their_work(
    tenant: Tenant, backends: Backends
) -> None:
    ns = await tenant.namespace()
    tasks = Tasks(tenant, ns.name)
    hooks = wh_grpc.WebhookServiceStub(tenant.channel)
    await hooks.CreateWebhook(
        wh_pb.CreateWebhookRequest(
            webhook=wh_pb.Webhook(url="http://127.0.0.1:9/never", event_types=["*"])
        ),
        metadata=tasks.md,
    )
    for i in range(3):
        await tasks.final((await tasks.submit([doc(f"x{i}")])).task_id)
    scope = await scope_of(tenant, backends, ns.namespace_id)

    async def counts() -> dict[str, int]:
        return {
            name: await backends.mongo.scoped(name, scope).count_documents()
            for name in ("tasks", "webhooks", "events", "deliveries")
        }

    async def delivered_or_retrying() -> bool:
        return (await counts())["deliveries"] == 3

    await eventually(delivered_or_retrying)
    assert (await counts())["tasks"] == 3
    await tenant.namespaces.DeleteNamespace(
        namespace_service_pb2.DeleteNamespaceRequest(), metadata=tasks.md
    )
    assert await counts() == dict.fromkeys(("tasks", "webhooks", "events", "deliveries"), 0)
    assert await WorkQueue(mongo=backends.mongo).rows_of(ns.namespace_id) == []
