"""The request path as a whole: policies, request ids, metadata limits, error hygiene."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from meshgate.v1 import (
    namespace_service_pb2,
    options_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
)

from interceptors.chain import SecurityChain
from interceptors.errors import ErrorMapper
from interceptors.telemetry import Telemetry
from server.policies import build_policy_table, undeclared_methods
from server.registry import descriptors
from server.settings import Settings
from storage.tenancy.organizations import Organization, OrganizationStore
from tests.support.clients import auth, client_credentials, raw_unary, trailers_of
from tests.support.error_details import details_of
from tests.support.pki import Pki
from tests.support.tenants import MakeTenant, Tenant

GET_ORG = organization_service_pb2.GetOrganizationRequest()


def test_every_rpc_declares_a_policy() -> None:
    table = build_policy_table(descriptors())
    assert undeclared_methods(descriptors(), table) == []
    for service in descriptors():
        for method in service.methods:
            options = method.GetOptions()
            assert options.HasExtension(options_pb2.policy), method.full_name
            policy = options.Extensions[options_pb2.policy]
            assert policy.access != options_pb2.ACCESS_UNSPECIFIED, method.full_name
            assert policy.rate_class != options_pb2.RATE_CLASS_UNSPECIFIED, method.full_name
            if policy.access == options_pb2.ACCESS_API_KEY:
                assert policy.permission != options_pb2.PERMISSION_UNSPECIFIED, method.full_name


def test_key_and_namespace_management_need_admin() -> None:
    table = build_policy_table(descriptors())
    for method in ("CreateKey", "RotateKey", "RevokeKey"):
        assert table[f"/meshgate.v1.KeyService/{method}"].permission == "admin"
    assert table["/meshgate.v1.NamespaceService/CreateNamespace"].permission == "admin"


async def test_method_without_policy_is_refused(pki: Pki, settings: Settings) -> None:
    """A handler registered without a policy never runs: the chain fails closed."""
    ran: list[bool] = []

    async def handler(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        ran.append(True)
        return b""

    chain = SecurityChain(
        policies={},
        errors=ErrorMapper(logger=logging.getLogger("test.errors")),
        steps=(),
        observers=(Telemetry(access_log=logging.getLogger("test.access")),),
        logger=logging.getLogger("test"),
    )
    server = grpc.aio.server(interceptors=(chain,))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Undeclared", {"Do": grpc.unary_unary_rpc_method_handler(handler)}
            ),
        )
    )
    creds = grpc.ssl_server_credentials(
        [(pki.read("server-key.pem"), pki.read("server.pem"))],
        pki.read("ca.pem"),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"localhost:{port}", client_credentials(pki)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw_unary(channel, "/test.Undeclared/Do")(b"")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert details_of(trailers_of(info.value)).reason == "METHOD_NOT_DECLARED"
        assert ran == []
    finally:
        await server.stop(0)


async def test_request_id_is_echoed_or_generated(tenant: Tenant) -> None:
    stub = organization_service_pb2_grpc.OrganizationServiceStub(tenant.channel)
    call = stub.GetOrganization(
        GET_ORG, metadata=auth(tenant.admin, **{"x-request-id": "trace-123"})
    )
    await call
    assert ("x-request-id", "trace-123") in tuple(await call.trailing_metadata())
    assert tuple(await call.initial_metadata()) == ()  # a unary call sends no initial metadata
    call = stub.GetOrganization(
        GET_ORG, metadata=auth(tenant.admin, **{"x-request-id": "bad id; with {braces}" * 20})
    )
    await call
    generated = dict(await call.trailing_metadata())["x-request-id"]
    assert len(generated) == 24 and generated.isalnum()
    # refused calls carry one too
    call = stub.GetOrganization(GET_ORG)
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert dict(await call.trailing_metadata()).get("x-request-id")
    assert tuple(await call.initial_metadata()) == ()


async def test_generated_request_ids_do_not_repeat(tenant: Tenant) -> None:
    stub = organization_service_pb2_grpc.OrganizationServiceStub(tenant.channel)
    ids = set()
    for _ in range(200):
        call = stub.GetOrganization(GET_ORG, metadata=auth(tenant.admin))
        await call
        ids.add(dict(await call.trailing_metadata())["x-request-id"])
    assert len(ids) == 200


async def test_concurrent_calls_never_see_each_others_metadata(make_tenant: MakeTenant) -> None:
    """The chain reads each call's headers once, in the call's own task: 3 organizations'
    keys and namespaces interleaved on one channel must each get their own answer."""
    tenants = [await make_tenant() for _ in range(3)]
    spaces = [await t.namespace() for t in tenants]

    async def one(i: int) -> tuple[int, str, str]:
        t, ns = tenants[i % 3], spaces[i % 3]
        org = await organization_service_pb2_grpc.OrganizationServiceStub(
            t.channel
        ).GetOrganization(GET_ORG, metadata=auth(t.admin))
        got = await t.namespaces.GetNamespace(
            namespace_service_pb2.GetNamespaceRequest(),
            metadata=auth(t.admin, **{"x-namespace": ns.namespace_id}),
        )
        return i, org.organization.organization_id, got.namespace.namespace_id

    for i, organization_id, namespace_id in await asyncio.gather(*(one(i) for i in range(300))):
        assert organization_id == tenants[i % 3].organization_id
        assert namespace_id == spaces[i % 3].namespace_id


async def test_oversized_metadata_is_invalid_argument(tenant: Tenant) -> None:
    stub = organization_service_pb2_grpc.OrganizationServiceStub(tenant.channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetOrganization(
            GET_ORG, metadata=auth(tenant.admin, **{"x-padding": "p" * 9000})
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata is too large" in (info.value.details() or "")


async def test_store_failure_is_internal_without_leaking(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unexpected exception in storage: INTERNAL, generic text + request id, no exception text."""

    async def boom(self: OrganizationStore, organization_id: str) -> Organization:
        raise RuntimeError("secret-ish internals: mongodb://admin:hunter2@db")

    monkeypatch.setattr(OrganizationStore, "get", boom)
    stub = organization_service_pb2_grpc.OrganizationServiceStub(tenant.channel)
    call = stub.GetOrganization(
        GET_ORG, metadata=auth(tenant.admin, **{"x-request-id": "req-boom"})
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (request id req-boom)"
