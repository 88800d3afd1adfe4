"""Namespace scoping from the attacker's side: foreign, unknown, missing, disallowed."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import common_pb2, namespace_service_pb2, options_pb2

from server.app import RunningServer
from server.backends import Backends
from tests.support.clients import auth
from tests.support.pki import Pki
from tests.support.tenants import MakeTenant, Tenant
from tests.support.wire import raw_http2_call

GET = namespace_service_pb2.GetNamespaceRequest()


async def get_ns(
    tenant: Tenant, secret: str, reference: str | None
) -> namespace_service_pb2.Namespace:
    response = await tenant.namespaces.GetNamespace(GET, metadata=auth(secret, reference))
    return response.namespace


async def status_of(
    tenant: Tenant, secret: str, reference: str | None
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_ns(tenant, secret, reference)
    return info.value.code(), info.value.details() or ""


async def test_resolved_by_id_and_by_name(tenant: Tenant) -> None:
    ns = await tenant.namespace("orders")
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    assert (await get_ns(tenant, reader.secret, ns.namespace_id)).name == "orders"
    assert (await get_ns(tenant, reader.secret, "orders")).namespace_id == ns.namespace_id


async def test_missing_header_on_a_namespaced_method(tenant: Tenant) -> None:
    code, message = await status_of(tenant, tenant.admin, None)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-namespace" in message
    code, _ = await status_of(tenant, tenant.admin, "   ")
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_another_organizations_namespace_is_not_found(make_tenant: MakeTenant) -> None:
    alice: Tenant = await make_tenant()
    mallory: Tenant = await make_tenant()
    secret_ns = await alice.namespace("payroll")
    await mallory.namespace("decoy")
    unknown = (grpc.StatusCode.NOT_FOUND, "namespace not found")
    # by id and by name, exactly like a namespace that does not exist at all
    assert await status_of(mallory, mallory.admin, secret_ns.namespace_id) == unknown
    assert await status_of(mallory, mallory.admin, "payroll") == unknown
    assert await status_of(mallory, mallory.admin, "ns_" + "Z" * 20) == unknown
    assert await status_of(mallory, mallory.admin, "no-such-namespace") == unknown
    assert await status_of(mallory, mallory.admin, "../payroll") == unknown
    # deleting it from the other organization fails the same way and leaves it intact
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mallory.namespaces.DeleteNamespace(
            namespace_service_pb2.DeleteNamespaceRequest(),
            metadata=auth(mallory.admin, secret_ns.namespace_id),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await get_ns(alice, alice.admin, "payroll")).namespace_id == secret_ns.namespace_id


async def test_namespace_of_another_environment_is_not_found(
    make_tenant: MakeTenant, backends: Backends
) -> None:
    """Same organization, production namespace, development key."""
    from storage.tenancy.namespaces import NamespaceStore
    from storage.tenancy.organizations import OrganizationStore

    dev: Tenant = await make_tenant("development")
    org = await OrganizationStore(mongo=backends.mongo).get(dev.organization_id)
    prod_ns = await NamespaceStore(mongo=backends.mongo).create(
        internal_id=org.internal_id, name="prod-data", environment="production"
    )
    assert await status_of(dev, dev.admin, prod_ns.namespace_id) == (
        grpc.StatusCode.NOT_FOUND,
        "namespace not found",
    )
    listed = await dev.namespaces.ListNamespaces(
        namespace_service_pb2.ListNamespacesRequest(), metadata=auth(dev.admin)
    )
    assert prod_ns.namespace_id not in {n.namespace_id for n in listed.namespaces}


async def test_namespace_allow_list(tenant: Tenant) -> None:
    allowed = await tenant.namespace()
    other = await tenant.namespace()
    limited = await tenant.key(options_pb2.PERMISSION_READ, namespaces=(allowed.name,))
    assert list(limited.key.namespace_ids) == [allowed.namespace_id]
    assert (await get_ns(tenant, limited.secret, allowed.namespace_id)).name == allowed.name
    code, _ = await status_of(tenant, limited.secret, other.namespace_id)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    listed = await tenant.namespaces.ListNamespaces(
        namespace_service_pb2.ListNamespacesRequest(), metadata=auth(limited.secret)
    )
    assert [n.namespace_id for n in listed.namespaces] == [allowed.namespace_id]


async def test_restricted_admin_cannot_widen_its_reach(tenant: Tenant) -> None:
    mine = await tenant.namespace()
    theirs = await tenant.namespace()
    admin = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(mine.namespace_id,))
    from meshgate.v1 import key_service_pb2

    for namespaces in ([], [theirs.namespace_id]):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tenant.keys.CreateKey(
                key_service_pb2.CreateKeyRequest(
                    name="wider",
                    environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                    permissions=[options_pb2.PERMISSION_READ],
                    namespaces=namespaces,
                ),
                metadata=auth(admin.secret),
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.namespaces.CreateNamespace(
            namespace_service_pb2.CreateNamespaceRequest(
                name="sneaky", environment=common_pb2.ENVIRONMENT_DEVELOPMENT
            ),
            metadata=auth(admin.secret),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_deleted_namespace_is_gone_at_once(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    await get_ns(tenant, tenant.admin, ns.name)  # cached now
    deleted = await tenant.namespaces.DeleteNamespace(
        namespace_service_pb2.DeleteNamespaceRequest(), metadata=auth(tenant.admin, ns.name)
    )
    assert deleted.namespace_id == ns.namespace_id
    assert await status_of(tenant, tenant.admin, ns.name) == (
        grpc.StatusCode.NOT_FOUND,
        "namespace not found",
    )
    # the name is free again
    again = await tenant.namespace(ns.name)
    assert again.namespace_id != ns.namespace_id


async def test_non_ascii_namespace_header_is_not_found(
    tenant: Tenant, server: RunningServer, pki: Pki
) -> None:
    answer = await raw_http2_call(
        server.port,
        pki,
        "/meshgate.v1.NamespaceService/GetNamespace",
        [
            (b"authorization", f"Bearer {tenant.admin}".encode()),
            (b"x-namespace", "ns-é".encode()),
        ],
    )
    assert answer.get(b"grpc-status") == str(grpc.StatusCode.NOT_FOUND.value[0]).encode()
