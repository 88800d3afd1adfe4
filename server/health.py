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
from storage.backends.redis_client import ping as ping_redis

__all__ = [
    "HEALTH_SERVICE",
    "GrpcHealth",
    "TrackedHealth",
    "add_health",
    "dependency_monitor",
    "not_serving",
]


class GrpcHealth(Protocol):
    """What the server uses of the stock grpc.health.v1 servicer."""

    async def set(self, service: str, status: int) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


class TrackedHealth:
    """The stock servicer, and the server's overall status ("") as it last set it: what the
    plain-HTTP readiness probe answers (server/observability.py), without a gRPC call.

    Like the stock servicer, it stays NOT_SERVING once draining has started, whatever a
    later dependency probe says."""

    def __init__(self, stock: GrpcHealth) -> None:
        self._stock = stock
        self._serving = True  # the stock servicer starts with "" SERVING
        self.draining = False

    @property
    def serving(self) -> bool:
        return self._serving and not self.draining

    async def set(self, service: str, status: int) -> None:
        if service == "":
            self._serving = status == health_pb2.HealthCheckResponse.SERVING
        await self._stock.set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self.draining = True
        await self._stock.enter_graceful_shutdown()


def add_health(server: grpc.aio.Server) -> TrackedHealth:
    """The stock asyncio health servicer; every service is SERVING until a probe says otherwise."""
    stock = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(stock, server)
    servicer: GrpcHealth = stock
    return TrackedHealth(servicer)


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
            "redis": lambda: ping_redis(backends.redis),
            "qdrant": backends.qdrant.get_collections,
        },
        interval_s=settings.health_interval_s,
        timeout_s=min(settings.backend_timeout_s, 2.0),
        on_change=on_change,
        repeat_log_s=settings.store_down_log_s,
        where={check.store.lower(): check.where for check in backends.checks},
    )


async def not_serving(c: Components, health: GrpcHealth) -> None:
    """Shutdown begins: every status NOT_SERVING at once, and kept so (the stock servicer
    ignores later changes; the probes no longer update `c.serving`)."""
    c.draining = True
    await health.enter_graceful_shutdown()
    for service in ("", *(s.name for s in SERVICES)):
        c.serving[service or "(server)"] = False
        c.metrics.serving.labels(service or "(server)").set(0.0)
