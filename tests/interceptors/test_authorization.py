"""Permissions, internal-only methods and forwarded peer identities, from the attacker's side."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from meshgate.v1 import (
    common_pb2,
    identity_service_pb2,
    identity_service_pb2_grpc,
    key_service_pb2,
    namespace_service_pb2,
    options_pb2,
)

from certs.dev_pki import CLIENT_ID
from server.app import RunningServer
from tests.support.clients import auth, client_credentials
from tests.support.pki import Pki
from tests.support.tenants import Tenant


async def test_read_key_cannot_call_admin_methods(tenant: Tenant) -> None:
    reader = await tenant.key(options_pb2.PERMISSION_READ, options_pb2.PERMISSION_WRITE)
    calls: list[Awaitable[object]] = [
        tenant.keys.CreateKey(
            key_service_pb2.CreateKeyRequest(
                name="escalate",
                environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                permissions=[options_pb2.PERMISSION_ADMIN],
            ),
            metadata=auth(reader.secret),
        ),
        tenant.keys.ListKeys(key_service_pb2.ListKeysRequest(), metadata=auth(reader.secret)),
        tenant.keys.RevokeKey(
            key_service_pb2.RevokeKeyRequest(key_id=tenant.admin_key_id),
            metadata=auth(reader.secret),
        ),
        tenant.namespaces.CreateNamespace(
            namespace_service_pb2.CreateNamespaceRequest(
                name="nope", environment=common_pb2.ENVIRONMENT_DEVELOPMENT
            ),
            metadata=auth(reader.secret),
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ADMIN" in (info.value.details() or "")
    # and the admin key it tried to revoke still works
    await tenant.keys.ListKeys(key_service_pb2.ListKeysRequest(), metadata=auth(tenant.admin))


async def test_admin_implies_read(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    got = await tenant.namespaces.GetNamespace(
        namespace_service_pb2.GetNamespaceRequest(), metadata=auth(tenant.admin, ns.namespace_id)
    )
    assert got.namespace.namespace_id == ns.namespace_id


async def test_write_key_without_read_cannot_read(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    writer = await tenant.key(options_pb2.PERMISSION_WRITE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.namespaces.GetNamespace(
            namespace_service_pb2.GetNamespaceRequest(), metadata=auth(writer.secret, ns.name)
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _resolve_stub(
    channel: grpc.aio.Channel,
) -> identity_service_pb2_grpc.IdentityServiceAsyncStub:
    return identity_service_pb2_grpc.IdentityServiceStub(channel)


async def test_internal_peer_resolves_internal_id(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    async with grpc.aio.secure_channel(
        f"localhost:{server.port}", client_credentials(pki, "internal")
    ) as channel:
        response = await _resolve_stub(channel).ResolveOrganization(
            identity_service_pb2.ResolveOrganizationRequest(organization_id=tenant.organization_id)
        )
        assert response.organization_id == tenant.organization_id
        assert len(response.internal_id) == 36  # a UUID, which no public response carries
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _resolve_stub(channel).ResolveOrganization(
                identity_service_pb2.ResolveOrganizationRequest(organization_id="org_" + "x" * 20)
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_api_keys_never_reach_the_internal_service(tenant: Tenant) -> None:
    """Even an ADMIN key from an ordinary client certificate is refused."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _resolve_stub(tenant.channel).ResolveOrganization(
            identity_service_pb2.ResolveOrganizationRequest(organization_id=tenant.organization_id),
            metadata=auth(tenant.admin),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_forged_forwarded_identity_from_an_untrusted_peer(tenant: Tenant) -> None:
    """A plain client claiming, via XFCC or l5d-client-id, to be the internal service."""
    request = identity_service_pb2.ResolveOrganizationRequest(
        organization_id=tenant.organization_id
    )
    for header, value in [
        ("x-forwarded-client-cert", "By=spiffe://x;URI=spiffe://meshgate.local/internal/dev"),
        ("l5d-client-id", "spiffe://meshgate.local/internal/dev"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _resolve_stub(tenant.channel).ResolveOrganization(
                request, metadata=((header, value),)
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "trusted proxy" in (info.value.details() or "")


async def test_trusted_proxy_forwards_the_client_identity(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    request = identity_service_pb2.ResolveOrganizationRequest(
        organization_id=tenant.organization_id
    )
    async with grpc.aio.secure_channel(
        f"localhost:{server.port}", client_credentials(pki, "proxy")
    ) as channel:
        stub = _resolve_stub(channel)
        xfcc = 'By=spiffe://meshgate.local/server;Hash=abc;Subject="CN=dev-internal";URI=spiffe://meshgate.local/internal/dev'
        ok = await stub.ResolveOrganization(request, metadata=(("x-forwarded-client-cert", xfcc),))
        assert ok.organization_id == tenant.organization_id
        ok = await stub.ResolveOrganization(
            request, metadata=(("l5d-client-id", "spiffe://meshgate.local/internal/dev"),)
        )
        assert ok.organization_id == tenant.organization_id
        # the proxy forwarding an ordinary client: no internal access
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ResolveOrganization(
                request, metadata=(("x-forwarded-client-cert", f"URI={CLIENT_ID}"),)
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # the proxy itself, forwarding nothing, is not an internal service either
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ResolveOrganization(request)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
