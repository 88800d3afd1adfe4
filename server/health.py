"""grpc.health.v1 for this server: each service's status follows the stores it needs.

The dependency monitor (storage/backends/health.py) probes MongoDB, Redis and
Qdrant; when one flips, every service whose registry row needs it turns
NOT_SERVING (load balancers then route around this instance) or back, and
the serving and dependency gauges follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import (  # type: ignore[attr-defined, unused-ignore]
    aio as health_aio,  # public (grpc_health.v1.health.aio), but the type stubs omit it
)
from prometheus_client import Gauge

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
]


class GrpcHealth(Protocol):
    """What the server uses of the stock grpc.health.v1 servicer."""

    async def set(self, service: str, status: int) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


class TrackedHealth:
    """This server's health, in one place: each service's status as last set (what the
    stock grpc.health.v1 servicer answers, the plain-HTTP readiness probe reads through
    `serving`, server/observability.py, and HealthService lists through `statuses`), the
    `meshgate_service_serving` gauge, and whether draining began.

    Like the stock servicer, once draining has started every status stays NOT_SERVING,
    whatever a later dependency probe says."""

    def __init__(
        self, stock: GrpcHealth, *, services: Sequence[str], gauge: Gauge | None = None
    ) -> None:
        self._stock = stock
        self._services = tuple(services)  # "" is the whole server
        self._gauge = gauge
        # "(server)" for "": as HealthService lists them; the stock servicer starts with
        # "" SERVING, the others as the first probe finds them
        self._statuses: dict[str, bool] = {}
        self._serving = True
        self._draining = False

    @property
    def serving(self) -> bool:
        """The whole server ("") is SERVING, and draining has not begun."""
        return self._serving and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    def statuses(self) -> dict[str, bool]:
        """Every service's status as last set ("(server)": the whole server)."""
        return dict(self._statuses)

    async def set(self, service: str, serving: bool) -> None:
        """A probe's verdict for one service; ignored once draining has begun."""
        if self._draining:
            return
        self._record(service, serving)
        await self._stock.set(service, _STATUS[serving])

    async def drain(self) -> None:
        """Shutdown begins: every status NOT_SERVING at once, and kept so."""
        self._draining = True
        await self._stock.enter_graceful_shutdown()
        for service in self._services:
            self._record(service, False)

    def _record(self, service: str, serving: bool) -> None:
        if service == "":
            self._serving = serving
        label = service or "(server)"
        self._statuses[label] = serving
        if self._gauge is not None:
            self._gauge.labels(label).set(float(serving))


_STATUS = {
    True: health_pb2.HealthCheckResponse.SERVING,
    False: health_pb2.HealthCheckResponse.NOT_SERVING,
}


def add_health(server: grpc.aio.Server, *, gauge: Gauge | None = None) -> TrackedHealth:
    """The stock asyncio health servicer; every service is SERVING until a probe says otherwise."""
    stock = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(stock, server)
    servicer: GrpcHealth = stock
    return TrackedHealth(servicer, services=("", *(s.name for s in SERVICES)), gauge=gauge)


def dependency_monitor(
    settings: Settings, backends: Backends, c: Components, health: TrackedHealth
) -> DependencyMonitor:
    """Probes every store; a flip updates the grpc.health.v1 status of the services needing it."""
    needs = {"": SERVER_NEEDS, **{s.name: s.needs for s in SERVICES}}

    async def on_change(states: Mapping[str, DependencyState]) -> None:
        c.breakers.observe(states)
        for service, stores in needs.items():
            await health.set(service, all(states[n].up for n in stores if n in states))
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
