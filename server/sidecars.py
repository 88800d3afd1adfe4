"""Envoy's ext_authz v3 and rate-limit v3 services, served on meshgate's own listener.

They share the listener, its mTLS (and certificate reloads) and the interceptor chain:
each call gets a request id, an access line and metrics like any other, and the chain's
authorization step admits only the sidecar identities of MESHGATE_EXT_AUTHZ_PEERS
(otherwise anyone could probe keys through Check). Each answer is then bounded by the
asking sidecar's binding (MESHGATE_EXT_AUTHZ_BINDINGS_FILE): the organizations and
source principals it may speak for; an allow-listed identity without one is refused
(PERMISSION_DENIED; the settings refuse to start with one). The bindings are reloaded
while the server runs (server/policy_files.py): `SidecarAnswers.use_bindings`. The deciders
(interceptors/sidecar/) run the very step objects the chain runs for meshgate's own
methods. They are not rows of the registry: that lists meshgate's services, whose
protos declare their policies; these two carry theirs in server/policies.py.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from calls.state import current_call
from interceptors.sidecar.bindings import SidecarBinding, SidecarBindings
from interceptors.sidecar.check import CheckDecider
from interceptors.sidecar.rate_limits import RateLimitDecider
from storage.core.errors import PermissionDeniedError, Reason

__all__ = ["SIDECAR_SERVICES", "SidecarAnswers", "add_sidecar_services"]

SIDECAR_SERVICES = (
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
    rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name,
)


class SidecarAnswers:
    """What both services answer with: the deciders, and the bindings in force."""

    def __init__(
        self, *, check: CheckDecider, rate_limits: RateLimitDecider, bindings: SidecarBindings
    ) -> None:
        self.check = check
        self.rate_limits = rate_limits
        self._bindings = bindings

    def use_bindings(self, bindings: SidecarBindings) -> None:
        """Answer the calls that start from now on with `bindings` (a reloaded file)."""
        self._bindings = bindings

    def asking(self) -> SidecarBinding:
        """The binding of the sidecar asking (the identity the chain's authorization step
        admitted: the call's peer)."""
        binding = self._bindings.of(current_call.get().peer_identity)
        if binding is None:
            raise PermissionDeniedError(
                "this sidecar is bound to no organization (MESHGATE_EXT_AUTHZ_BINDINGS_FILE)",
                reason=Reason.PEER_NOT_ALLOWED,
            )
        return binding


class _Authorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, answers: SidecarAnswers) -> None:
        self._answers = answers

    async def Check(self, request: Any, context: Any) -> Any:
        return await self._answers.check.check(request, sidecar=self._answers.asking())


class _RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, answers: SidecarAnswers) -> None:
        self._answers = answers

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        return await self._answers.rate_limits.should_rate_limit(
            request, sidecar=self._answers.asking()
        )


def add_sidecar_services(server: grpc.aio.Server, answers: SidecarAnswers) -> None:
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Authorization(answers), server)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(_RateLimitService(answers), server)
