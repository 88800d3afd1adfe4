"""Traces leave the process over OTLP/gRPC, configured by the standard OTEL_* variables.

A real receiver (`opentelemetry.proto.collector.trace.v1.TraceService` on loopback) gets
the server span of a call made with a `traceparent`: in the caller's trace, the child of
the caller's span, with the RPC conventions' attributes and the caller's public ids, and
nothing secret in the whole export. A collector that never answers slows no call: the
batch processor's queue overflows and the export times out, and both are counted on
/metrics.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tomllib
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from meshgate.v1 import namespace_service_pb2, namespace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider

from server.app import RunningServer, create_server
from server.backends import Backends
from server.settings import Settings
from server.tracing import TracingError, tracer_provider_from_env
from tests.server.test_observability import sample, scrape
from tests.support.clients import auth, client_credentials
from tests.support.otlp import OtlpReceiver, SilentCollector, attributes_of
from tests.support.pki import Pki
from tests.support.processes import ROOT
from tests.support.tenants import MakeTenant, internal_id_of
from tests.support.waiting import eventually

GET_NS = namespace_service_pb2.GetNamespaceRequest()


def test_the_otlp_exporter_is_part_of_the_runtime_install() -> None:
    """A runtime dependency (not an extra): the container image's `pip install .` has it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "opentelemetry-exporter-otlp-proto-grpc" in names


@pytest.mark.parametrize(
    ("env", "refusal"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTLP over gRPC only"),
    ],
)
def test_otlp_over_http_is_refused_not_sent_over_grpc(env: dict[str, str], refusal: str) -> None:
    with pytest.raises(TracingError, match=refusal):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "otlp", **env})


def test_tracing_stays_off_unless_asked() -> None:
    assert tracer_provider_from_env({}) is None
    assert tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
        is None
    )


async def traced_server(
    settings: Settings, backends: Backends, monkeypatch: pytest.MonkeyPatch, **otel: str
) -> tuple[RunningServer, TracerProvider]:
    """A server whose spans go where these OTEL_* variables say (read from the environment,
    as `meshgate serve` reads them), through the process's span counts."""
    for name, value in otel.items():
        monkeypatch.setenv(name, value)
    provider = tracer_provider_from_env(os.environ)
    assert provider is not None
    running = await create_server(settings, backends, tracer=provider.get_tracer("meshgate"))
    return running, provider


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver().start()
    yield started
    started.stop()


@pytest.fixture
async def silent() -> AsyncIterator[SilentCollector]:
    collector = SilentCollector().start()
    yield collector
    collector.stop()


async def test_a_call_s_server_span_reaches_the_collector_under_the_caller_s_span(
    settings: Settings,
    backends: Backends,
    pki: Pki,
    make_tenant: MakeTenant,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, provider = await traced_server(
        settings,
        backends,
        monkeypatch,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="meshgate-otlp-test",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    tenant = await make_tenant()
    ns = await tenant.namespace()
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent_id}-01"
    bad_key = "mg_development_" + secrets.token_urlsafe(32)
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{running.port}", client_credentials(pki)
        ) as channel:
            stub = namespace_service_pb2_grpc.NamespaceServiceStub(channel)
            await stub.GetNamespace(
                GET_NS, metadata=auth(tenant.admin, ns.name, traceparent=traceparent)
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetNamespace(
                    GET_NS, metadata=auth(bad_key, ns.name, traceparent=traceparent)
                )
        assert await asyncio.to_thread(provider.force_flush)
    finally:
        await running.stop(0)
        await asyncio.to_thread(provider.shutdown)

    ours = [(r, s) for r, s in receiver.spans() if s.trace_id == bytes.fromhex(trace_id)]
    assert len(ours) == 2, ours
    statuses = {}
    for resource, span in ours:
        assert resource["service.name"] == "meshgate-otlp-test"
        assert span.parent_span_id == bytes.fromhex(parent_id)
        assert span.kind == trace_pb2.Span.SPAN_KIND_SERVER
        assert span.name == "meshgate.v1.NamespaceService/GetNamespace"
        attributes = attributes_of(span.attributes)
        assert attributes["rpc.system.name"] == "grpc"
        assert attributes["rpc.method"] == "meshgate.v1.NamespaceService/GetNamespace"
        statuses[attributes["rpc.status_code"]] = attributes
    admitted, refused = statuses["OK"], statuses["UNAUTHENTICATED"]
    assert admitted["meshgate.organization_id"] == tenant.organization_id
    assert admitted["meshgate.key_id"] == tenant.admin_key_id
    assert admitted["meshgate.namespace_id"] == ns.namespace_id
    assert "meshgate.key_id" not in refused and "error.type" not in refused
    exported = b"".join(r.SerializeToString() for r in receiver.requests)
    internal_id = await internal_id_of(tenant.organization_id, backends)
    for never in (tenant.admin, bad_key, internal_id):
        assert never.encode() not in exported, never


async def test_a_collector_that_never_answers_slows_no_call_and_drops_are_counted(
    settings: Settings,
    backends: Backends,
    pki: Pki,
    make_tenant: MakeTenant,
    silent: SilentCollector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each export hangs until the exporter's timeout (1 s); meanwhile the calls go on, their
    spans fill the batch queue (4) and the rest are turned away: the calls never waited for
    the exporter, or the queue could not have overflowed."""
    running, provider = await traced_server(
        settings,
        backends,
        monkeypatch,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=silent.endpoint,
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_SCHEDULE_DELAY="20",
        OTEL_BSP_MAX_QUEUE_SIZE="4",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4",
    )
    tenant = await make_tenant()
    ns = await tenant.namespace()
    before = await asyncio.to_thread(scrape, running.metrics_port)
    calls = 20
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{running.port}", client_credentials(pki)
        ) as channel:
            stub = namespace_service_pb2_grpc.NamespaceServiceStub(channel)
            md = auth(tenant.admin, ns.name)
            await stub.GetNamespace(GET_NS, metadata=md)
            # the exporter has taken that span and is stuck on the silent collector
            assert await asyncio.to_thread(silent.accepted.wait, 10)
            for _ in range(calls):
                await stub.GetNamespace(GET_NS, metadata=md, timeout=5)

        def dropped(reason: str) -> float:
            now = scrape(running.metrics_port)
            return sample(now, "meshgate_trace_spans_dropped_total", reason=reason) - sample(
                before, "meshgate_trace_spans_dropped_total", reason=reason
            )

        queue_full = await asyncio.to_thread(dropped, "queue_full")
        print(f"\n{calls + 1} calls, collector silent: {queue_full:g} spans dropped (queue full)")
        assert queue_full > 0

        async def export_failed() -> bool:
            return await asyncio.to_thread(dropped, "export_failed") > 0

        await eventually(export_failed, timeout_s=15, interval_s=0.2)
    finally:
        silent.stop()  # refused at once from now on: the last export fails fast
        await running.stop(0)
        await asyncio.to_thread(provider.shutdown)
