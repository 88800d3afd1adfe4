"""Envoy's ext_authz v3 and rate-limit v3 services, served on meshgate's own listener.

They share the listener, its mTLS (and certificate reloads) and the interceptor chain:
each call gets a request id, an access line and metrics like any other, and the chain's
authorization step admits only the sidecar identities of MESHGATE_EXT_AUTHZ_PEERS
(otherwise anyone could probe keys through Check). The deciders
(interceptors/sidecar/) run the very step objects the chain runs for meshgate's own
methods. They are not rows of the registry: that lists meshgate's services, whose
protos declare their policies; these two carry theirs in server/policies.py.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from interceptors.sidecar.check import CheckDecider
from interceptors.sidecar.rate_limits import RateLimitDecider

__all__ = ["SIDECAR_SERVICES", "add_sidecar_services"]

SIDECAR_SERVICES = (
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
    rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name,
)


class _Authorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, decider: CheckDecider) -> None:
        self._decider = decider

    async def Check(self, request: Any, context: Any) -> Any:
        return await self._decider.check(request)


class _RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, decider: RateLimitDecider) -> None:
        self._decider = decider

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        return await self._decider.should_rate_limit(request)


def add_sidecar_services(
    server: grpc.aio.Server, *, check: CheckDecider, rate_limits: RateLimitDecider
) -> None:
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Authorization(check), server)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(_RateLimitService(rate_limits), server)
