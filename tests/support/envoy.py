"""Envoy's side of ext_authz v3 and the rate-limit service v3: requests shaped as Envoy sends
them, and clients built from xds-protos (the generated stubs are untyped)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

__all__ = [
    "CLIENT_PRINCIPAL",
    "Check",
    "RateLimit",
    "check_request",
    "denied_headers",
    "descriptor",
    "ok_headers",
    "rate_limit_request",
]

# what Envoy puts in source.principal for the test client's certificate (its URI SAN)
CLIENT_PRINCIPAL = "spiffe://meshgate.local/client"


def check_request(
    path: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    method: str = "POST",
    principal: str = CLIENT_PRINCIPAL,
    grpc_call: bool = True,
    raw_headers: bool = False,
) -> Any:
    """A CheckRequest as Envoy's ext_authz filter builds it: header names lowercased, the
    values of a repeated header joined with commas in `headers` (or, with Envoy's
    `encode_raw_headers`, one `header_map` entry per value), `:path`, the method, and the
    downstream certificate's identity in source.principal."""
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    pairs = [(k.lower(), v) for k, v in pairs]
    if grpc_call:
        pairs.append(("content-type", "application/grpc"))
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    attributes.source.principal = principal
    attributes.source.address.socket_address.address = "10.0.0.7"
    attributes.source.address.socket_address.port_value = 40000
    attributes.destination.principal = "spiffe://meshgate.local/shop"
    http = attributes.request.http
    http.id = "1234"
    http.method = method
    http.path = path
    http.host = "shop.mesh"
    http.protocol = "HTTP/2"
    if raw_headers:
        for key, value in pairs:
            http.header_map.headers.add(key=key, raw_value=value.encode())
    else:
        for key, value in pairs:
            http.headers[key] = f"{http.headers[key]},{value}" if key in http.headers else value
    return request


def descriptor(*entries: tuple[str, str], hits_addend: int | None = None) -> Any:
    d = ratelimit_pb2.RateLimitDescriptor()
    for key, value in entries:
        d.entries.add(key=key, value=value)
    if hits_addend is not None:
        d.hits_addend.value = hits_addend
    return d


def rate_limit_request(*descriptors: Any, hits_addend: int = 0, domain: str = "mesh") -> Any:
    return rls_pb2.RateLimitRequest(
        domain=domain, descriptors=list(descriptors), hits_addend=hits_addend
    )


class Check:
    """`envoy.service.auth.v3.Authorization/Check` over a channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = external_auth_pb2_grpc.AuthorizationStub(channel)

    async def __call__(self, request: Any) -> Any:
        return await self._stub.Check(request, timeout=10)


class RateLimit:
    """`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over a channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = rls_pb2_grpc.RateLimitServiceStub(channel)

    async def __call__(self, request: Any) -> Any:
        return await self._stub.ShouldRateLimit(request, timeout=10)


def ok_headers(response: Any) -> dict[str, str]:
    """The headers an allowed Check adds for the upstream."""
    return {o.header.key: o.header.value for o in response.ok_response.headers}


def denied_headers(response: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in response.denied_response.headers}
