"""A webhook delivery carries the W3C trace context of the call that submitted its task."""

from __future__ import annotations

import grpc
from meshgate.v1 import task_service_pb2 as task_pb
from meshgate.v1 import task_service_pb2_grpc as task_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.app import create_server
from server.backends import Backends
from server.settings import Settings
from tests.support.clients import auth, client_credentials
from tests.support.namespace_clients import Hooks, doc
from tests.support.pki import Pki
from tests.support.tenants import Tenant
from tests.support.waiting import eventually
from tests.support.webhooks import Received, Receiver, new_endpoint_path

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


async def deliver_one(
    tenant: Tenant, receiver: Receiver, channel: grpc.aio.Channel, **headers: str
) -> Received:
    """Submit a task through `channel` with `headers`; the delivery of its completion."""
    ns = await tenant.namespace()
    hooks, where = Hooks(tenant, ns.name), new_endpoint_path()
    created = await hooks.create(receiver.url(where), ["task.completed"])
    receiver.endpoint(where, created.secret)
    await task_grpc.TaskServiceStub(channel).SubmitIngestion(
        task_pb.SubmitIngestionRequest(documents=[doc("d1")]),
        metadata=auth(tenant.admin, ns.name, **headers),
    )
    await eventually(lambda: receiver.delivered_at_least(where, 1), timeout_s=10)
    (request,) = receiver.requests(where)
    assert request.status == 200 and request.valid
    return request


async def test_delivery_carries_the_callers_traceparent_when_meshgate_does_not_trace(
    tenant: Tenant, receiver: Receiver
) -> None:
    request = await deliver_one(
        tenant, receiver, tenant.channel, traceparent=TRACEPARENT, tracestate="vendor=opaque"
    )
    assert request.headers["traceparent"] == TRACEPARENT
    assert request.headers["tracestate"] == "vendor=opaque"
    assert request.payload["type"] == "task.completed"


async def test_delivery_carries_the_submitting_server_span_when_tracing(
    tenant: Tenant, receiver: Receiver, settings: Settings, backends: Backends, pki: Pki
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = await create_server(settings, backends, tracer=provider.get_tracer("meshgate"))
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{traced.port}", client_credentials(pki)
        ) as channel:
            request = await deliver_one(tenant, receiver, channel, traceparent=TRACEPARENT)
    finally:
        await traced.stop(0)
    (submit,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "meshgate.v1.TaskService/SubmitIngestion"
    ]
    assert submit.context is not None and submit.context.trace_id == TRACE_ID
    assert request.headers["traceparent"] == f"00-{TRACE_ID:032x}-{submit.context.span_id:016x}-01"


async def test_no_trace_no_trace_headers(tenant: Tenant, receiver: Receiver) -> None:
    request = await deliver_one(tenant, receiver, tenant.channel)
    assert "traceparent" not in request.headers and "tracestate" not in request.headers
