"""The server's health in one object: the stock grpc.health.v1 servicer, each service's
status, the serving gauge and draining all follow from `set` and `drain`, in-process."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined, unused-ignore]
from prometheus_client import CollectorRegistry, Gauge

from server.health import TrackedHealth

SERVICES = ("", "meshgate.v1.KeyService", "meshgate.v1.AuditService")


def tracked() -> tuple[TrackedHealth, health_aio.HealthServicer, CollectorRegistry]:
    stock = health_aio.HealthServicer()
    registry = CollectorRegistry()
    gauge = Gauge("meshgate_service_serving", "serving", ["service"], registry=registry)
    return TrackedHealth(stock, services=SERVICES, gauge=gauge), stock, registry


async def stock_status(stock: health_aio.HealthServicer, service: str) -> int:
    """What the stock servicer answers a health check (a known service: no abort)."""
    no_context: Any = None
    response = await stock.Check(health_pb2.HealthCheckRequest(service=service), no_context)
    return int(response.status)


def gauge(registry: CollectorRegistry, label: str) -> float | None:
    return registry.get_sample_value("meshgate_service_serving", {"service": label})


async def test_each_status_is_kept_once_for_every_reader() -> None:
    health, stock, registry = tracked()
    assert health.serving and health.statuses() == {}
    await health.set("", True)
    await health.set("meshgate.v1.KeyService", False)
    assert health.statuses() == {"(server)": True, "meshgate.v1.KeyService": False}
    assert health.serving  # the whole server still serves
    assert (
        await stock_status(stock, "meshgate.v1.KeyService")
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    assert gauge(registry, "meshgate.v1.KeyService") == 0.0 and gauge(registry, "(server)") == 1.0
    await health.set("", False)
    assert not health.serving and not health.draining


async def test_once_draining_every_status_stays_not_serving() -> None:
    health, stock, registry = tracked()
    for service in SERVICES:
        await health.set(service, True)
    await health.drain()
    assert health.draining and not health.serving
    assert health.statuses() == {
        "(server)": False,
        "meshgate.v1.KeyService": False,
        "meshgate.v1.AuditService": False,
    }
    await health.set("", True)  # a probe answering after the drain began changes nothing
    assert not health.serving and health.statuses()["(server)"] is False
    assert await stock_status(stock, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert all(gauge(registry, label) == 0.0 for label in health.statuses())
