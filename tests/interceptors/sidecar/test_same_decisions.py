"""Check decides as meshgate does: the same status code, message and error reason as a direct
call, for the same key, namespace and policy (routes that mirror meshgate's methods,
conftest.py). The direct call's reason is in its ErrorInfo, Check's in the denied response's
`x-meshgate-error-reason` header."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import grpc
import pytest
from meshgate.v1 import key_service_pb2, options_pb2

from interceptors.sidecar.check import ERROR_REASON_HEADER
from server.backends import Backends
from tests.support.clients import raw_unary, trailers_of
from tests.support.envoy import Check, check_request, denied_headers
from tests.support.error_details import details_of
from tests.support.tenants import MakeTenant, admin_of_environment

LIST = "/meshgate.v1.DocumentService/ListDocuments"
DELETE = "/meshgate.v1.DocumentService/DeleteDocument"
GET_ORG = "/meshgate.v1.OrganizationService/GetOrganization"
CREATE_KEY = "/meshgate.v1.KeyService/CreateKey"

# (method, key, namespace, the code both must give)
TABLE = [
    (LIST, "reader", "own", "OK"),
    (LIST, "reader", "own-id", "OK"),
    (LIST, "admin", "own", "OK"),
    (LIST, "reader", None, "INVALID_ARGUMENT"),
    (LIST, "reader", "foreign", "NOT_FOUND"),
    (LIST, "reader", "foreign-id", "NOT_FOUND"),
    (LIST, "reader", "unknown", "NOT_FOUND"),
    (LIST, "elsewhere", "own", "PERMISSION_DENIED"),
    (LIST, "revoked", "own", "UNAUTHENTICATED"),
    (LIST, "unknown", "own", "UNAUTHENTICATED"),
    (LIST, "malformed", "own", "UNAUTHENTICATED"),
    (LIST, None, "own", "UNAUTHENTICATED"),
    (LIST, "production", "own", "NOT_FOUND"),
    (LIST, "reader", "own-twice", "INVALID_ARGUMENT"),
    (DELETE, "reader", "own", "PERMISSION_DENIED"),
    (DELETE, "revoked", "own", "UNAUTHENTICATED"),
    (CREATE_KEY, "reader", None, "PERMISSION_DENIED"),
    (GET_ORG, "reader", None, "OK"),
    (GET_ORG, "revoked", None, "UNAUTHENTICATED"),
]


@dataclass
class World:
    keys: dict[str, str]
    namespaces: dict[str, list[str]]


@pytest.fixture
async def world(make_sidecar_tenant: MakeTenant, backends: Backends) -> World:
    tenant = await make_sidecar_tenant()
    other = await make_sidecar_tenant()
    own, second, foreign = (
        await tenant.namespace(),
        await tenant.namespace(),
        await other.namespace(),
    )
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    elsewhere = await tenant.key(options_pb2.PERMISSION_READ, namespaces=(second.namespace_id,))
    revoked = await tenant.key(options_pb2.PERMISSION_READ)
    await tenant.keys.RevokeKey(
        key_service_pb2.RevokeKeyRequest(key_id=revoked.key.key_id),
        metadata=(("authorization", f"Bearer {tenant.admin}"),),
    )
    return World(
        keys={
            "reader": reader.secret,
            "admin": tenant.admin,
            "elsewhere": elsewhere.secret,
            "revoked": revoked.secret,
            "unknown": "mg_development_" + secrets.token_urlsafe(32),
            "malformed": "not-a-key",
            "production": await admin_of_environment(tenant, backends, "production"),
        },
        namespaces={
            "own": [own.name],
            "own-id": [own.namespace_id],
            "foreign": [foreign.name],
            "foreign-id": [foreign.namespace_id],
            "unknown": ["no-such-namespace"],
            "own-twice": [own.name, second.name],
        },
    )


async def test_check_gives_the_decision_of_a_direct_call(
    world: World, sidecar_channel: grpc.aio.Channel, direct_channel: grpc.aio.Channel
) -> None:
    check = Check(sidecar_channel)
    for method, key, namespace, expected in TABLE:
        headers: list[tuple[str, str]] = []
        if key is not None:
            headers.append(("authorization", f"Bearer {world.keys[key]}"))
        for reference in world.namespaces[namespace] if namespace else []:
            headers.append(("x-namespace", reference))
        row = (method, key, namespace)

        try:
            await raw_unary(direct_channel, method)(b"", metadata=tuple(headers), timeout=10)
            direct = ("OK", "", "")
        except grpc.aio.AioRpcError as error:
            reason = details_of(trailers_of(error)).reason
            direct = (error.code().name, error.details() or "", reason)

        response = await check(check_request(method, headers))
        judged = (
            grpc.StatusCode(_code(response.status.code)).name,
            response.status.message,
            denied_headers(response).get(ERROR_REASON_HEADER, ""),
        )
        assert direct[0] == expected, row
        assert judged == direct, row
        assert response.HasField("ok_response") == (expected == "OK"), row


def _code(number: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == number)
