"""Authentication from the attacker's side: every bad key is UNAUTHENTICATED, with one message."""

from __future__ import annotations

import asyncio
import string
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from meshgate.v1 import (
    key_service_pb2,
    options_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
)

from server.app import RunningServer, create_server
from server.backends import Backends
from server.bootstrap import bootstrap
from server.settings import Settings
from storage.core.key_secrets import mint_secret, parse_secret
from tests.support.clients import Metadata, auth, client_credentials
from tests.support.pki import Pki
from tests.support.tenants import Tenant
from tests.support.wire import raw_http2_call

MESSAGE = "missing or invalid API key"


async def get_org(
    tenant: Tenant, metadata: Metadata
) -> organization_service_pb2.GetOrganizationResponse:
    stub = organization_service_pb2_grpc.OrganizationServiceStub(tenant.channel)
    return await stub.GetOrganization(
        organization_service_pb2.GetOrganizationRequest(), metadata=metadata
    )


async def refused(tenant: Tenant, metadata: Metadata) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_org(tenant, metadata)
    return info.value


def crc32_base62(body: str) -> str:
    """The checksum of the key format (storage/core/key_secrets.py), as an attacker who
    read the documented format computes it: CRC32 in six base62 digits."""
    alphabet = string.digits + string.ascii_uppercase + string.ascii_lowercase
    value, digits = zlib.crc32(body.encode("ascii")), []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(alphabet[digit])
    return "".join(reversed(digits))


def flip_last_char(secret: str) -> str:
    last = secret[-1]
    return secret[:-1] + ("A" if last != "A" else "B")


async def test_valid_key_is_accepted(tenant: Tenant) -> None:
    response = await get_org(tenant, auth(tenant.admin))
    assert response.organization.organization_id == tenant.organization_id


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-header"),
        pytest.param((("authorization", "Bearer"),), id="empty-bearer"),
        pytest.param((("authorization", "Basic dXNlcjpwYXNz"),), id="wrong-scheme"),
        pytest.param((("authorization", "Bearer not-a-key"),), id="malformed"),
        pytest.param((("authorization", "Bearer " + "mg_dev_" + "a" * 500),), id="oversized"),
        pytest.param(
            (("authorization", "Bearer mg_dev_" + "A" * 40 + "_000000"),), id="bad-checksum"
        ),
        pytest.param(
            (("authorization", "Bearer " + mint_secret("development").secret),), id="unknown"
        ),
        # longer than any key: refused before it is parsed or looked up
        pytest.param(
            (("authorization", "Bearer " + mint_secret("development").secret + "A" * 100),),
            id="oversized",
        ),
    ],
)
async def test_bad_credentials_are_refused_alike(
    tenant: Tenant, metadata: tuple[tuple[str, str], ...]
) -> None:
    error = await refused(tenant, metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == MESSAGE


async def test_tampered_key_fails_its_checksum(tenant: Tenant) -> None:
    error = await refused(tenant, auth(flip_last_char(tenant.admin)))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MESSAGE)


async def test_revoked_key_is_refused(tenant: Tenant) -> None:
    created = await tenant.key(options_pb2.PERMISSION_READ)
    await get_org(tenant, auth(created.secret))  # works, and is now cached
    await tenant.keys.RevokeKey(
        key_service_pb2.RevokeKeyRequest(key_id=created.key.key_id), metadata=auth(tenant.admin)
    )
    error = await refused(tenant, auth(created.secret))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MESSAGE)


async def test_expired_key_is_refused(tenant: Tenant) -> None:
    expire = Timestamp()
    expire.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
    created = await tenant.key(options_pb2.PERMISSION_READ, expire_time=expire)
    await get_org(tenant, auth(created.secret))  # valid (and cached) until its expiry
    await asyncio.sleep(1.2)
    error = await refused(tenant, auth(created.secret))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MESSAGE)


async def test_key_expiring_in_the_past_cannot_be_created(tenant: Tenant) -> None:
    expire = Timestamp()
    expire.FromDatetime(datetime.now(UTC) - timedelta(seconds=5))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.key(options_pb2.PERMISSION_READ, expire_time=expire)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "future" in (info.value.details() or "")


async def test_rotation_without_grace_retires_the_old_secret_at_once(tenant: Tenant) -> None:
    created = await tenant.key(options_pb2.PERMISSION_READ)
    await get_org(tenant, auth(created.secret))
    rotated = await tenant.keys.RotateKey(
        key_service_pb2.RotateKeyRequest(
            key_id=created.key.key_id, grace_period=Duration(seconds=0)
        ),
        metadata=auth(tenant.admin),
    )
    error = await refused(tenant, auth(created.secret))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MESSAGE)
    await get_org(tenant, auth(rotated.secret))


async def test_old_secret_works_during_grace_and_not_after(tenant: Tenant) -> None:
    created = await tenant.key(options_pb2.PERMISSION_READ)
    rotated = await tenant.keys.RotateKey(
        key_service_pb2.RotateKeyRequest(
            key_id=created.key.key_id, grace_period=Duration(seconds=1)
        ),
        metadata=auth(tenant.admin),
    )
    await get_org(tenant, auth(created.secret))  # inside the grace period
    await get_org(tenant, auth(rotated.secret))
    await asyncio.sleep(1.2)
    error = await refused(tenant, auth(created.secret))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MESSAGE)
    await get_org(tenant, auth(rotated.secret))


async def test_key_of_an_environment_this_server_refuses(
    server: RunningServer, settings: Settings, backends: Backends, pki: Pki
) -> None:
    """A production-only deployment refuses development keys, valid as they are elsewhere."""
    prod_only = await create_server(
        replace(settings, environments=frozenset({"production"})), backends
    )
    try:
        dev = await bootstrap(backends, name="dev-org", plan="free", environment="development")
        prod = await bootstrap(backends, name="prod-org", plan="free", environment="production")
        async with grpc.aio.secure_channel(
            f"localhost:{prod_only.port}", client_credentials(pki)
        ) as channel:
            stub = organization_service_pb2_grpc.OrganizationServiceStub(channel)
            request = organization_service_pb2.GetOrganizationRequest()
            ok = await stub.GetOrganization(request, metadata=auth(prod.secret))
            assert ok.organization.organization_id == prod.organization_id
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetOrganization(request, metadata=auth(dev.secret))
            assert (info.value.code(), info.value.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                MESSAGE,
            )
    finally:
        await prod_only.stop(0)


async def test_secret_with_a_forged_environment_prefix_is_refused(tenant: Tenant) -> None:
    """Re-labelling a dev key as prod (checksum recomputed) does not match any stored key."""
    body = tenant.admin.rsplit("_", 1)[0].replace("mg_dev_", "mg_prod_", 1)
    forged = f"{body}_{crc32_base62(body)}"
    assert parse_secret(forged) is not None  # well-formed: it passes the checksum
    error = await refused(tenant, auth(forged))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MESSAGE)


async def test_non_ascii_bearer_token_is_unauthenticated(
    tenant: Tenant, server: RunningServer, pki: Pki
) -> None:
    """grpc clients refuse to send it, but HTTP/2 carries it: still UNAUTHENTICATED."""
    secret = "mg_prod_" + "é" * 40 + "_AAAAAA"
    answer = await raw_http2_call(
        server.port,
        pki,
        "/meshgate.v1.OrganizationService/GetOrganization",
        [(b"authorization", f"Bearer {secret}".encode())],
    )
    assert answer.get(b"grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0]).encode()
    assert unquote(answer.get(b"grpc-message", b"").decode()) == MESSAGE
