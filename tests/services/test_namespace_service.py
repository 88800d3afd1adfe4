"""NamespaceService through the real server."""

from __future__ import annotations

import grpc
import pytest
from meshgate.v1 import common_pb2
from meshgate.v1 import namespace_service_pb2 as pb

from tests.support.clients import auth
from tests.support.tenants import MakeTenant, Tenant


async def test_names_are_unique_per_organization(make_tenant: MakeTenant) -> None:
    a: Tenant = await make_tenant()
    b: Tenant = await make_tenant()
    await a.namespace("shared-name")
    await b.namespace("shared-name")  # another organization may use the same name
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.namespace("shared-name")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("name", ["", "A", "1abc", "a" * 64, "has space", "ns_" + "a" * 20, "ünï"])
async def test_bad_names_are_refused(tenant: Tenant, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.namespaces.CreateNamespace(
            pb.CreateNamespaceRequest(name=name, environment=common_pb2.ENVIRONMENT_DEVELOPMENT),
            metadata=auth(tenant.admin),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_environment_must_be_given(tenant: Tenant) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.namespaces.CreateNamespace(
            pb.CreateNamespaceRequest(name="fine"), metadata=auth(tenant.admin)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ENVIRONMENT_" in (info.value.details() or "")


async def test_list_pages(tenant: Tenant) -> None:
    made = {(await tenant.namespace()).namespace_id for _ in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = await tenant.namespaces.ListNamespaces(
            pb.ListNamespacesRequest(page_size=2, page_token=token), metadata=auth(tenant.admin)
        )
        seen.extend(n.namespace_id for n in page.namespaces)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(made)


async def test_oversized_namespace_header(tenant: Tenant) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.namespaces.GetNamespace(
            pb.GetNamespaceRequest(), metadata=auth(tenant.admin, "n" * 300)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
