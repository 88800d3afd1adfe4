"""grpc.health.v1 for this server: each service's status follows the stores it needs.

The dependency monitor (storage/backends/health.py) probes MongoDB, Redis and
Qdrant; when one flips, every service whose registry row needs it turns
NOT_SERVING (load balancers then route around this instance) or back, and
the serving and dependency gauges follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import (  # type: ignore[attr-defined, unused-ignore]
    aio as health_aio,  # public (grpc_health.v1.health.aio), but the type stubs omit it
)

from server.backends import Backends
from server.components import Components
from server.registry import SERVER_NEEDS, SERVICES
from server.settings import Settings
from storage.backends.health import DependencyMonitor, DependencyState

__all__ = ["HEALTH_SERVICE", "GrpcHealth", "add_health", "dependency_monitor", "not_serving"]


class GrpcHealth(Protocol):
    """What the server uses of the stock grpc.health.v1 servicer."""

    async def set(self, service: str, status: int) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


def add_health(server: grpc.aio.Server) -> GrpcHealth:
    """The stock asyncio health servicer; every service is SERVING until a probe says otherwise."""
    stock = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(stock, server)
    servicer: GrpcHealth = stock
    return servicer


def dependency_monitor(
    settings: Settings, backends: Backends, c: Components, health: GrpcHealth
) -> DependencyMonitor:
    """Probes every store; a flip updates the grpc.health.v1 status of the services needing it."""
    needs = {"": SERVER_NEEDS, **{s.name: s.needs for s in SERVICES}}

    async def on_change(states: Mapping[str, DependencyState]) -> None:
        c.breakers.observe(states)
        serving_now = {} if c.draining else needs  # draining: NOT_SERVING stays
        for service, stores in serving_now.items():
            serving = all(states[n].up for n in stores if n in states)
            c.serving[service or "(server)"] = serving
            c.metrics.serving.labels(service or "(server)").set(float(serving))
            await health.set(
                service,
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )
        for name, state in states.items():
            c.metrics.dependency_up.labels(name).set(float(state.up))
            c.metrics.dependency_latency.labels(name).set(state.latency_s)

    return DependencyMonitor(
        probes={
            "mongodb": backends.mongo.ping,
            "redis": backends.redis.ping,
            "qdrant": backends.qdrant.get_collections,
        },
        interval_s=settings.health_interval_s,
        timeout_s=min(settings.backend_timeout_s, 2.0),
        on_change=on_change,
    )


async def not_serving(c: Components, health: GrpcHealth) -> None:
    """Shutdown begins: every status NOT_SERVING at once, and kept so (the stock servicer
    ignores later changes; the probes no longer update `c.serving`)."""
    c.draining = True
    await health.enter_graceful_shutdown()
    for service in ("", *(s.name for s in SERVICES)):
        c.serving[service or "(server)"] = False
        c.metrics.serving.labels(service or "(server)").set(0.0)
