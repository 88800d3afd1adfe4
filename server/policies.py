"""The method -> policy table, read from the `meshgate.v1.policy` option in the protos."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from meshgate.v1 import options_pb2

from calls.policy import Access, Policy
from services.convert import PERMISSION_NAMES

__all__ = ["PUBLIC_METHODS", "build_policy_table", "undeclared_methods"]

_ACCESS = {
    options_pb2.ACCESS_API_KEY: Access.API_KEY,
    options_pb2.ACCESS_INTERNAL_PEER: Access.INTERNAL_PEER,
    options_pb2.ACCESS_PUBLIC: Access.PUBLIC,
}
_RATE_CLASS = {
    options_pb2.RATE_CLASS_METADATA: "metadata",
    options_pb2.RATE_CLASS_DATA: "data",
    options_pb2.RATE_CLASS_SEARCH: "search",
    options_pb2.RATE_CLASS_ADMIN: "admin",
}

# Services we do not own the protos of carry an explicit public policy here.
PUBLIC_METHODS = {
    "/grpc.health.v1.Health/Check": Policy(access=Access.PUBLIC),
    "/grpc.health.v1.Health/Watch": Policy(access=Access.PUBLIC),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Policy(access=Access.PUBLIC),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Policy(access=Access.PUBLIC),
    # Envoy's ext_authz and rate-limit services (server/sidecars.py): trusted sidecars only
    "/envoy.service.auth.v3.Authorization/Check": Policy(access=Access.SIDECAR),
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit": Policy(access=Access.SIDECAR),
}


def _paged(method: MethodDescriptor) -> bool:
    """A List method: a page token in, the next one out (AIP-158)."""
    return (
        "page_token" in method.input_type.fields_by_name
        and "next_page_token" in method.output_type.fields_by_name
    )


def _policy(options: options_pb2.MethodPolicy, *, paged: bool) -> Policy | None:
    access = _ACCESS.get(options.access)
    if access is None:
        return None
    permission = PERMISSION_NAMES.get(options.permission)
    if access is Access.API_KEY and permission is None:
        return None  # an API-key method must say which permission it needs
    return Policy(
        access=access,
        permission=permission,
        namespaced=options.namespaced,
        cost=options.cost,
        rate_class=_RATE_CLASS.get(options.rate_class, "metadata"),
        audit=options.audit,
        paged=paged,
    )


def build_policy_table(services: Iterable[ServiceDescriptor]) -> dict[str, Policy]:
    """Policies of every declared method; methods without a valid policy are left out."""
    table = dict(PUBLIC_METHODS)
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(options_pb2.policy):
                continue
            policy = _policy(options.Extensions[options_pb2.policy], paged=_paged(method))
            if policy is not None:
                table[f"/{service.full_name}/{method.name}"] = policy
    return table


def undeclared_methods(
    services: Iterable[ServiceDescriptor], table: dict[str, Policy]
) -> list[str]:
    return [
        f"/{s.full_name}/{m.name}"
        for s in services
        for m in s.methods
        if f"/{s.full_name}/{m.name}" not in table
    ]
