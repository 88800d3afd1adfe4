"""Envoy's side of ext_authz v3 and the rate-limit service v3: requests shaped as Envoy sends
them, clients built from xds-protos (the generated stubs are untyped), and the shipped
configuration (deploy/envoy/envoy.yaml) parsed into Envoy's Bootstrap message, with the
descriptors its rate-limit actions make of a request's headers."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import descriptor_pool, json_format

from tests.support.processes import ROOT

__all__ = [
    "CLIENT_PRINCIPAL",
    "ENVOY_CONFIG",
    "Check",
    "RateLimit",
    "check_request",
    "connection_manager",
    "denied_headers",
    "descriptor",
    "descriptors_for",
    "envoy_bootstrap",
    "load_type",
    "ok_headers",
    "rate_limit_request",
    "type_urls",
]

ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
TYPE_PREFIX = "type.googleapis.com/"

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


def type_urls(node: Any) -> set[str]:
    """Every `@type` in a parsed configuration."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type":
                found.add(value)
            else:
                found |= type_urls(value)
    elif isinstance(node, list):
        for item in node:
            found |= type_urls(item)
    return found


def load_type(url: str) -> None:
    """Imports the xds-protos modules of the type's package, so the pool knows it."""
    assert url.startswith(TYPE_PREFIX), url
    package = url.removeprefix(TYPE_PREFIX).rsplit(".", 1)[0]
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    descriptor_pool.Default().FindMessageTypeByName(url.removeprefix(TYPE_PREFIX))


def envoy_bootstrap() -> Any:
    """deploy/envoy/envoy.yaml as Envoy's Bootstrap (every field and enum must exist)."""
    document = yaml.safe_load(ENVOY_CONFIG.read_text())
    for url in type_urls(document):
        load_type(url)
    return json_format.ParseDict(document, bootstrap_pb2.Bootstrap())


def connection_manager(bootstrap: Any) -> Any:
    """The HttpConnectionManager of the first listener."""
    listener = bootstrap.static_resources.listeners[0]
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def descriptors_for(route: Any, headers: Mapping[str, str]) -> list[Any]:
    """The descriptors Envoy's rate-limit filter sends for a request with these headers on
    this route: one per `rate_limits` entry whose actions all produce an entry (a missing
    `request_headers` header skips the descriptor, as Envoy does)."""
    made = []
    for limit in route.route.rate_limits:
        entries: list[tuple[str, str]] = []
        for action in limit.actions:
            kind = action.WhichOneof("action_specifier")
            if kind == "request_headers":
                value = headers.get(action.request_headers.header_name)
                if value is None:
                    break
                entries.append((action.request_headers.descriptor_key, value))
            elif kind == "generic_key":
                key = action.generic_key.descriptor_key or "generic_key"
                entries.append((key, action.generic_key.descriptor_value))
            else:
                raise AssertionError(f"an action this helper does not model: {kind}")
        else:
            made.append(descriptor(*entries))
    return made
