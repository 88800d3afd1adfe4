"""Operating meshgate: access logs, spans, metrics, audit trail, deep health."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2
from meshgate.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    health_service_pb2,
    health_service_pb2_grpc,
    key_service_pb2,
    namespace_service_pb2,
    options_pb2,
    vector_service_pb2,
    vector_service_pb2_grpc,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import storage.backends.tracing
from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.logs import GuardedJsonFormatter
from server.settings import Secret, Settings
from tests.support.clients import auth, client_credentials, health_check
from tests.support.pki import Pki
from tests.support.processes import RedisServer
from tests.support.tenants import MakeTenant, Tenant
from tests.support.waiting import eventually

GET_NS = namespace_service_pb2.GetNamespaceRequest()


async def test_one_access_log_line_per_call(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    ns = await tenant.namespace()
    caplog.set_level(logging.INFO, logger="meshgate.access")
    caplog.clear()
    await tenant.namespaces.GetNamespace(
        GET_NS, metadata=auth(tenant.admin, ns.name, **{"x-request-id": "req-log-1"})
    )
    lines = [
        r
        for r in caplog.records
        if r.name == "meshgate.access" and getattr(r, "request_id", "") == "req-log-1"
    ]
    assert len(lines) == 1
    line = json.loads(GuardedJsonFormatter().format(lines[0]))
    assert line["method"] == "/meshgate.v1.NamespaceService/GetNamespace"
    assert line["status"] == "OK" and line["duration_ms"] > 0
    assert (
        line["organization_id"] == tenant.organization_id
        and line["namespace_id"] == ns.namespace_id
    )
    assert line["key_id"] == tenant.admin_key_id and line["peer"].startswith("spiffe://")
    assert tenant.admin not in json.dumps(line)


async def test_access_line_redacts_what_a_caller_chooses(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """The access line is built from ready parts; the request id a caller sends is still
    redacted when it has the shape of an internal id (a UUID), and the line is valid JSON."""
    ns = await tenant.namespace()
    caplog.set_level(logging.INFO, logger="meshgate.access")
    caplog.clear()
    uuid_shaped = "9b2f4a9e-1c1d-4e0f-8a43-3f2d1f0c9e11"
    await tenant.namespaces.GetNamespace(
        GET_NS, metadata=auth(tenant.admin, ns.name, **{"x-request-id": uuid_shaped})
    )
    records = [
        r
        for r in caplog.records
        if r.name == "meshgate.access" and getattr(r, "request_id", "") == uuid_shaped
    ]
    assert len(records) == 1
    text = GuardedJsonFormatter().format(records[0])
    assert "9b2f4a9e" not in text
    line = json.loads(text)
    assert line["request_id"] == "[redacted]" and line["message"] == "call"
    assert line["level"] == "INFO" and line["logger"] == "meshgate.access"
    assert line["namespace_id"] == ns.namespace_id and line["status"] == "OK"
    assert line["time"].endswith("+00:00") and line["peer_address"].startswith("ipv")


async def test_access_line_names_the_callers_trace_only_when_it_sent_one(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """Tracing off: a caller's `traceparent` still puts its trace id in the access line
    (formatted in the call, as the server's handler does); a call without one has none."""
    ns = await tenant.namespace()
    caplog.set_level(logging.INFO, logger="meshgate.access")
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(GuardedJsonFormatter())
    access = logging.getLogger("meshgate.access")
    access.addHandler(handler)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        for request_id, extra in (
            ("traced-1", {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}),
            ("untraced-1", {}),
        ):
            await tenant.namespaces.GetNamespace(
                GET_NS,
                metadata=auth(tenant.admin, ns.name, **{"x-request-id": request_id}, **extra),
            )
    finally:
        access.removeHandler(handler)
    lines = {line["request_id"]: line for line in map(json.loads, written.getvalue().splitlines())}
    assert lines["traced-1"]["trace_id"] == trace_id and len(lines["traced-1"]["span_id"]) == 16
    assert "trace_id" not in lines["untraced-1"] and "span_id" not in lines["untraced-1"]


async def test_spans_follow_rpc_conventions_with_store_children(
    settings: Settings,
    backends: Backends,
    pki: Pki,
    make_tenant: MakeTenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(
        storage.backends.tracing, "_TRACER", provider.get_tracer("meshgate.storage")
    )
    traced = await create_server(settings, backends, tracer=provider.get_tracer("meshgate"))
    try:
        tenant: Tenant = await make_tenant()
        ns = await tenant.namespace()
        async with grpc.aio.secure_channel(
            f"localhost:{traced.port}", client_credentials(pki)
        ) as channel:
            vectors = vector_service_pb2_grpc.VectorServiceStub(channel)
            md = auth(tenant.admin, ns.name)
            await vectors.CreateVectorStore(
                vector_service_pb2.CreateVectorStoreRequest(
                    vector_store=vector_service_pb2.VectorStore(
                        dimension=2, distance=vector_service_pb2.DISTANCE_COSINE
                    )
                ),
                metadata=md,
            )
            fresh = await tenant.key(options_pb2.PERMISSION_READ)  # unknown to the traced server
            exporter.clear()
            await vectors.Search(
                vector_service_pb2.SearchRequest(vector=[1, 0]),
                metadata=auth(fresh.secret, ns.name),
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await vectors.Search(
                    vector_service_pb2.SearchRequest(vector=[1, 0]), metadata=auth("mg_dev_bad")
                )
        spans = exporter.get_finished_spans()
        server_spans = [s for s in spans if s.kind.name == "SERVER"]
        assert [s.name for s in server_spans] == ["meshgate.v1.VectorService/Search"] * 2
        ok, refused = server_spans
        assert ok.context is not None
        attributes = dict(ok.attributes or {})
        assert attributes["rpc.system.name"] == "grpc"
        assert attributes["rpc.method"] == "meshgate.v1.VectorService/Search"
        assert attributes["rpc.status_code"] == "OK"
        assert attributes["network.peer.address"] in ("127.0.0.1", "::1")
        assert isinstance(attributes["network.peer.port"], int)
        assert "error.type" not in attributes
        assert attributes["meshgate.namespace_id"] == ns.namespace_id
        refused_attributes = dict(refused.attributes or {})
        assert refused_attributes["rpc.status_code"] == "UNAUTHENTICATED"
        assert "error.type" not in refused_attributes  # a refusal is not the server's error
        children = {
            (s.attributes or {})["db.system.name"]
            for s in spans
            if s.parent and s.parent.span_id == ok.context.span_id
        }
        assert {"qdrant", "redis", "mongodb"} <= children, children
        assert all(
            s.context.trace_id == ok.context.trace_id
            for s in spans
            if s.parent and s.parent.span_id == ok.context.span_id
        )
    finally:
        await traced.stop(0)


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        text: str = response.read().decode()
        return text


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


async def test_metrics_endpoint_counters_move(server: RunningServer, tenant: Tenant) -> None:
    ns = await tenant.namespace()
    method = "/meshgate.v1.NamespaceService/GetNamespace"
    before = await asyncio.to_thread(scrape, server.metrics_port)
    for _ in range(3):
        await tenant.namespaces.GetNamespace(GET_NS, metadata=auth(tenant.admin, ns.name))
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    for metadata in (auth("mg_dev_nope"), auth(reader.secret)):
        with pytest.raises(grpc.aio.AioRpcError):
            await tenant.keys.ListKeys(key_service_pb2.ListKeysRequest(), metadata=metadata)
    after = await asyncio.to_thread(scrape, server.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert (
        moved(
            "rpc_server_call_duration_seconds_count",
            rpc_system_name="grpc",
            rpc_method=method.lstrip("/"),
            rpc_status_code="OK",
        )
        == 3
    )
    list_keys = "meshgate.v1.KeyService/ListKeys"  # one form of rpc_method in every metric
    assert moved("meshgate_auth_failures_total", rpc_method=list_keys, code="UNAUTHENTICATED") >= 1
    assert (
        moved("meshgate_auth_failures_total", rpc_method=list_keys, code="PERMISSION_DENIED") == 1
    )
    assert "key_id=" not in after and 'peer="' not in after  # no label a caller chooses
    assert moved("meshgate_credits_debited_total", plan="enterprise") >= 3
    assert moved("meshgate_key_cache_hits_total") >= 2

    async def healthy() -> bool:
        # gauges of the last probe (every 2 s): a probe that timed out while earlier
        # multi-replica tests loaded the shared embedded engine is repaired by the next one
        now = await asyncio.to_thread(scrape, server.metrics_port)
        return (
            sample(now, "meshgate_dependency_up", dependency="mongodb") == 1
            and sample(now, "meshgate_service_serving", service="meshgate.v1.DocumentService") == 1
        )

    await eventually(healthy, timeout_s=10, interval_s=0.5)


async def test_audit_trail_records_and_detects_tampering(
    tenant: Tenant, backends: Backends
) -> None:
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    md = auth(tenant.admin)
    ns = await tenant.namespace()
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    await tenant.keys.RevokeKey(
        key_service_pb2.RevokeKeyRequest(key_id=reader.key.key_id), metadata=md
    )
    writer = await tenant.key(options_pb2.PERMISSION_WRITE)
    with pytest.raises(grpc.aio.AioRpcError):  # a denial: audited
        await tenant.keys.ListKeys(key_service_pb2.ListKeysRequest(), metadata=auth(writer.secret))
    events = (
        await audit.ListAuditEvents(audit_service_pb2.ListAuditEventsRequest(), metadata=md)
    ).events
    actions = [(e.method.rsplit("/", 1)[1], e.outcome, e.resource) for e in reversed(events)]
    assert ("CreateNamespace", "OK", ns.namespace_id) in actions
    assert ("CreateKey", "OK", reader.key.key_id) in actions
    assert ("RevokeKey", "OK", reader.key.key_id) in actions
    assert ("ListKeys", "PERMISSION_DENIED", "") in actions
    denial = next(e for e in events if e.outcome == "PERMISSION_DENIED")
    assert denial.actor_key_id == writer.key.key_id and denial.actor_peer.startswith("spiffe://")
    assert denial.request_id and denial.peer_address
    assert [e.sequence for e in events] == sorted((e.sequence for e in events), reverse=True)
    only = await audit.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(action="RevokeKey", resource=reader.key.key_id),
        metadata=md,
    )
    assert [e.method for e in only.events] == ["/meshgate.v1.KeyService/RevokeKey"]
    page = await audit.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(page_size=2), metadata=md
    )
    rest = await audit.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(page_token=page.next_page_token), metadata=md
    )
    pages = [e.sequence for e in page.events] + [e.sequence for e in rest.events]
    assert len(page.events) == 2 and pages == list(range(pages[0], 0, -1))  # newest first, no gaps

    verdict = await audit.VerifyAuditChain(audit_service_pb2.VerifyAuditChainRequest(), metadata=md)
    assert verdict.intact and verdict.events_checked == len(events) + 4  # + the listings (audited)
    # an insider edits one event straight in MongoDB
    victim = next(e for e in events if e.method.endswith("RevokeKey"))
    await backends.mongo.database["audit_blocks"].update_one(
        {"events.event_id": victim.event_id}, {"$set": {"events.$.outcome": "PERMISSION_DENIED"}}
    )
    verdict = await audit.VerifyAuditChain(audit_service_pb2.VerifyAuditChainRequest(), metadata=md)
    assert not verdict.intact
    assert (verdict.first_broken_sequence, verdict.first_broken_event_id) == (
        victim.sequence,
        victim.event_id,
    )
    assert "hash" in verdict.reason


async def test_audit_chain_detects_a_deleted_event(tenant: Tenant, backends: Backends) -> None:
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    for _ in range(3):
        await tenant.namespace()
    events = (
        await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(), metadata=auth(tenant.admin)
        )
    ).events
    middle = events[1]
    await backends.mongo.database["audit_blocks"].update_one(
        {"events.event_id": middle.event_id}, {"$pull": {"events": {"event_id": middle.event_id}}}
    )
    verdict = await audit.VerifyAuditChain(
        audit_service_pb2.VerifyAuditChainRequest(), metadata=auth(tenant.admin)
    )
    assert not verdict.intact and verdict.first_broken_sequence == middle.sequence + 1


async def test_redis_down_turns_dependent_services_not_serving(
    settings: Settings,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
    make_tenant: MakeTenant,
) -> None:
    redis = RedisServer.on_free_port(tmp_path_factory.mktemp("hr"))
    redis.start()
    own = replace(settings, redis_url=Secret(redis.url), health_interval_s=0.2)
    backends = await open_backends(own)
    running = await create_server(own, backends)
    tenant: Tenant = await make_tenant()
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{running.port}", client_credentials(pki)
        ) as channel:
            health = health_check(channel)
            deep = health_service_pb2_grpc.HealthServiceStub(channel)

            async def status(service: str) -> int:
                response = await health(health_pb2.HealthCheckRequest(service=service))
                return int(response.status)

            async def wait_for(service: str, wanted: int) -> None:
                async def reached() -> bool:
                    return await status(service) == wanted

                await eventually(reached, timeout_s=5, interval_s=0.05)

            serving, not_serving = (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            )
            assert await status("meshgate.v1.DocumentService") == serving
            redis.stop()
            await wait_for("meshgate.v1.DocumentService", not_serving)
            await wait_for("meshgate.v1.KeyService", not_serving)
            assert await status("meshgate.v1.OrganizationService") == serving  # needs MongoDB only
            assert await status("") == serving
            # ... so the pod stays ready: Redis is shared, every replica would go at once
            assert await asyncio.to_thread(scrape, running.metrics_port, "/readyz") == "ok\n"
            report = await deep.DeepCheck(
                health_service_pb2.DeepCheckRequest(), metadata=auth(tenant.admin)
            )
            states = {d.name: d for d in report.dependencies}
            assert not states["redis"].up and states["redis"].error and states["mongodb"].up
            assert {s.service: s.serving for s in report.services}[
                "meshgate.v1.DocumentService"
            ] is False
            redis.start()
            await wait_for("meshgate.v1.DocumentService", serving)
            await wait_for("meshgate.v1.KeyService", serving)
            reader = await tenant.key(options_pb2.PERMISSION_READ)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await deep.DeepCheck(
                    health_service_pb2.DeepCheckRequest(), metadata=auth(reader.secret)
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await running.stop(0)
        await backends.close()
        redis.stop()
