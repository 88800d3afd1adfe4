"""HealthService.DeepCheck: every dependency's state and latency, and every service's status."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from meshgate.v1 import health_service_pb2 as pb
from meshgate.v1 import health_service_pb2_grpc as pb_grpc

from services.convert import timestamp
from storage.backends.health import DependencyMonitor

__all__ = ["HealthServicer"]


class HealthServicer(pb_grpc.HealthServiceServicer):
    def __init__(
        self, *, monitor: DependencyMonitor, services: Callable[[], Mapping[str, bool]]
    ) -> None:
        self._monitor = monitor
        self._services = services

    async def DeepCheck(self, request: pb.DeepCheckRequest, context: Any) -> pb.DeepCheckResponse:
        states = await self._monitor.check_once()
        return pb.DeepCheckResponse(
            dependencies=[
                pb.Dependency(
                    name=s.name,
                    up=s.up,
                    latency_ms=s.latency_s * 1000,
                    checked_time=timestamp(s.checked_at),
                    error=s.error,
                )
                for s in states.values()
            ],
            services=[
                pb.ServiceHealth(service=name, serving=serving)
                for name, serving in sorted(self._services().items())
            ],
        )
