"""Organizations for tests: each with an ADMIN key, creating namespaces and keys
through the real API (and recording every secret and internal_id for the log check)."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from meshgate.v1 import (
    common_pb2,
    key_service_pb2,
    key_service_pb2_grpc,
    namespace_service_pb2,
    namespace_service_pb2_grpc,
    options_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
)

from server.backends import Backends
from server.bootstrap import bootstrap
from storage.backends.scoped import Scope
from storage.core.ids import new_internal_id, new_namespace_id
from storage.tenancy.keys import KeyStore
from storage.tenancy.organizations import OrganizationStore
from tests.support.clients import auth
from tests.support.log_guard import NEVER_LOGGED

__all__ = [
    "ENV_PROTO",
    "GET_ORG",
    "GetOrganizationCall",
    "MakeTenant",
    "Tenant",
    "admin_of_environment",
    "burst_calls",
    "create_tenant",
    "internal_id_of",
    "org_stub",
    "random_scope",
    "scope_of",
]

ENV_PROTO: dict[str, common_pb2.Environment.ValueType] = {
    "development": common_pb2.ENVIRONMENT_DEVELOPMENT,
    "staging": common_pb2.ENVIRONMENT_STAGING,
    "production": common_pb2.ENVIRONMENT_PRODUCTION,
}


@dataclass
class Tenant:
    """One organization with an ADMIN key, and helpers that go through the real API."""

    organization_id: str
    admin_key_id: str
    admin: str
    channel: grpc.aio.Channel
    environment: str = "development"

    @property
    def keys(self) -> key_service_pb2_grpc.KeyServiceAsyncStub:
        return key_service_pb2_grpc.KeyServiceStub(self.channel)

    @property
    def namespaces(self) -> namespace_service_pb2_grpc.NamespaceServiceAsyncStub:
        return namespace_service_pb2_grpc.NamespaceServiceStub(self.channel)

    async def namespace(self, name: str | None = None) -> namespace_service_pb2.Namespace:
        response = await self.namespaces.CreateNamespace(
            namespace_service_pb2.CreateNamespaceRequest(
                name=name or f"ns-{secrets.token_hex(4)}",
                environment=ENV_PROTO[self.environment],
            ),
            metadata=auth(self.admin),
        )
        return response.namespace

    async def key(
        self,
        *permissions: options_pb2.Permission.ValueType,
        namespaces: tuple[str, ...] = (),
        expire_time: Timestamp | None = None,
        bound_peers: tuple[str, ...] = (),
        creator: str | None = None,
    ) -> key_service_pb2.CreateKeyResponse:
        """A key of this organization (READ when no permission is given), created with the
        ADMIN key, or with `creator`."""
        request = key_service_pb2.CreateKeyRequest(
            name="test key",
            environment=ENV_PROTO[self.environment],
            permissions=list(permissions) or [options_pb2.PERMISSION_READ],
            namespaces=list(namespaces),
            bound_peers=list(bound_peers),
        )
        if expire_time is not None:
            request.expire_time.CopyFrom(expire_time)
        created = await self.keys.CreateKey(request, metadata=auth(creator or self.admin))
        NEVER_LOGGED.add(created.secret)
        return created


class MakeTenant(Protocol):
    """The `make_tenant` fixture: another organization on the session's server."""

    async def __call__(
        self, environment: str = "development", plan: str = "enterprise"
    ) -> Tenant: ...


async def create_tenant(
    backends: Backends, channel: grpc.aio.Channel, *, environment: str, plan: str
) -> Tenant:
    """A new organization and its ADMIN key, as `meshgate bootstrap` makes them."""
    result = await bootstrap(
        backends, name=f"org-{secrets.token_hex(3)}", plan=plan, environment=environment
    )
    NEVER_LOGGED.add(result.secret)
    NEVER_LOGGED.add(await internal_id_of(result.organization_id, backends))
    return Tenant(
        organization_id=result.organization_id,
        admin_key_id=result.key_id,
        admin=result.secret,
        channel=channel,
        environment=environment,
    )


async def admin_of_environment(tenant: Tenant, backends: Backends, environment: str) -> str:
    """An unrestricted ADMIN key of the tenant's organization in another environment (a key
    cannot create keys of another environment through the API; `meshgate bootstrap` can)."""
    _, secret = await KeyStore(mongo=backends.mongo).create(
        organization_id=tenant.organization_id,
        name=f"{environment} admin",
        environment=environment,
        permissions=frozenset({"admin"}),
        namespace_ids=[],
        expires_at=None,
    )
    NEVER_LOGGED.add(secret)
    return secret


async def internal_id_of(organization_id: str, backends: Backends) -> str:
    """The organization's internal_id, read from storage (the API never shows it)."""
    return (await OrganizationStore(mongo=backends.mongo).get(organization_id)).internal_id


async def scope_of(tenant: Tenant, backends: Backends, namespace_id: str) -> Scope:
    """The storage scope of one of the tenant's namespaces."""
    return Scope(
        internal_id=await internal_id_of(tenant.organization_id, backends),
        namespace_id=namespace_id,
    )


def random_scope() -> Scope:
    """A scope of a made-up organization and namespace, for storage tests without a tenant."""
    return Scope(internal_id=new_internal_id(), namespace_id=new_namespace_id())


GET_ORG = organization_service_pb2.GetOrganizationRequest()
GetOrganizationCall = grpc.aio.UnaryUnaryCall[
    organization_service_pb2.GetOrganizationRequest,
    organization_service_pb2.GetOrganizationResponse,
]


def org_stub(tenant: Tenant) -> organization_service_pb2_grpc.OrganizationServiceAsyncStub:
    return organization_service_pb2_grpc.OrganizationServiceStub(tenant.channel)


async def burst_calls(tenant: Tenant, secret: str, n: int) -> list[GetOrganizationCall]:
    """`n` GetOrganization calls one after another, each finished (refused or not)."""
    calls = []
    for _ in range(n):
        call = org_stub(tenant).GetOrganization(GET_ORG, metadata=auth(secret))
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
        calls.append(call)
    return calls
