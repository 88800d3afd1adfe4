"""W3C trace context: a caller's trace continues through meshgate's server span."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from meshgate.v1 import namespace_service_pb2, namespace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.app import RunningServer, create_server
from server.backends import Backends
from server.settings import Settings
from tests.support.clients import auth, client_credentials
from tests.support.pki import Pki
from tests.support.tenants import Tenant

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"
GET_NS = namespace_service_pb2.GetNamespaceRequest()


@dataclass
class Traced:
    server: RunningServer
    exporter: InMemorySpanExporter
    channel: grpc.aio.Channel

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind.name == "SERVER"]


@pytest.fixture
async def traced(settings: Settings, backends: Backends, pki: Pki) -> AsyncIterator[Traced]:
    """A second server on the same stores whose spans go to an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = await create_server(settings, backends, tracer=provider.get_tracer("meshgate"))
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{server.port}", client_credentials(pki)
        ) as channel:
            yield Traced(server, exporter, channel)
    finally:
        await server.stop(0)


async def test_a_client_trace_is_the_parent_of_the_server_span(
    traced: Traced, tenant: Tenant
) -> None:
    ns = await tenant.namespace()
    stub = namespace_service_pb2_grpc.NamespaceServiceStub(traced.channel)
    traced.exporter.clear()
    await stub.GetNamespace(
        GET_NS,
        metadata=auth(
            tenant.admin,
            ns.name,
            traceparent=TRACEPARENT,
            tracestate="vendor=opaque",
            baggage="tenant.tier=gold",
        ),
    )
    (span,) = traced.server_spans()
    assert span.name == "meshgate.v1.NamespaceService/GetNamespace"
    assert span.parent is not None and span.parent.is_remote
    assert (span.parent.trace_id, span.parent.span_id) == (TRACE_ID, CALLER_SPAN_ID)
    assert span.context is not None and span.context.trace_id == TRACE_ID
    assert span.context.trace_state.get("vendor") == "opaque"  # tracestate goes on


async def test_without_trace_context_the_server_span_is_a_root(
    traced: Traced, tenant: Tenant
) -> None:
    ns = await tenant.namespace()
    stub = namespace_service_pb2_grpc.NamespaceServiceStub(traced.channel)
    traced.exporter.clear()
    await stub.GetNamespace(GET_NS, metadata=auth(tenant.admin, ns.name))
    (span,) = traced.server_spans()
    assert span.parent is None
    assert span.context is not None and span.context.trace_id != TRACE_ID


@pytest.mark.parametrize(
    "header",
    [
        "not-a-traceparent",
        f"00-{0:032x}-{CALLER_SPAN_ID:016x}-01",  # all-zero trace id: invalid
        f"ff-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01",  # version ff is forbidden
    ],
)
async def test_a_malformed_traceparent_starts_a_new_trace(
    traced: Traced, tenant: Tenant, header: str
) -> None:
    """A forged or broken header never fails the call and never becomes a parent."""
    ns = await tenant.namespace()
    stub = namespace_service_pb2_grpc.NamespaceServiceStub(traced.channel)
    traced.exporter.clear()
    await stub.GetNamespace(GET_NS, metadata=auth(tenant.admin, ns.name, traceparent=header))
    (span,) = traced.server_spans()
    assert span.parent is None


async def test_trace_context_is_bounded(traced: Traced, tenant: Tenant) -> None:
    """`tracestate` and `baggage` are the caller's text: they ride within the 8 KiB of request
    metadata, and a `tracestate` of more than 32 members is dropped whole (the W3C limit
    OpenTelemetry's propagator keeps), while the call and its parent trace go on."""
    ns = await tenant.namespace()
    stub = namespace_service_pb2_grpc.NamespaceServiceStub(traced.channel)
    traced.exporter.clear()
    members = ",".join(f"v{i}=x" for i in range(33))
    await stub.GetNamespace(
        GET_NS, metadata=auth(tenant.admin, ns.name, traceparent=TRACEPARENT, tracestate=members)
    )
    (span,) = traced.server_spans()
    assert span.context is not None and span.context.trace_id == TRACE_ID
    assert len(span.context.trace_state) == 0
    for header in ("tracestate", "baggage"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetNamespace(
                GET_NS,
                metadata=auth(
                    tenant.admin, ns.name, traceparent=TRACEPARENT, **{header: "k=" + "v" * 8200}
                ),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata is too large" in (refused.value.details() or "")
