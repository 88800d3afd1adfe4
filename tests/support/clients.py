"""How tests call the server: mTLS channel credentials, call metadata, refused calls."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import cast

import grpc
import pytest

from tests.support.pki import Pki

__all__ = ["Metadata", "auth", "client_credentials", "rpc_error", "trailers_of"]

Metadata = tuple[tuple[str, str], ...]


def client_credentials(pki: Pki, identity: str = "client") -> grpc.ChannelCredentials:
    """TLS with the client certificate `<identity>.pem` ("client", "internal", "proxy",
    "foreign"), as services in the mesh connect."""
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read(f"{identity}-key.pem"),
        certificate_chain=pki.read(f"{identity}.pem"),
    )


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
