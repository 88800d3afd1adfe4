"""Envoy ext_authz v3 `Check`, driven as Envoy drives it, from the attacker's side too.

Every request below is a CheckRequest shaped as Envoy's ext_authz filter sends it (lower-
cased headers, repeated values joined with commas, source.principal from the downstream
certificate), sent over mTLS by the sidecar's own identity.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

import grpc
import pytest
from meshgate.v1 import audit_service_pb2, audit_service_pb2_grpc, key_service_pb2, options_pb2

from interceptors.sidecar.bindings import SidecarBindings
from server.app import create_server
from server.backends import Backends
from server.settings import Settings
from tests.support.clients import auth, client_credentials, raw_unary, rpc_error
from tests.support.envoy import CLIENT_PRINCIPAL, Check, check_request, denied_headers, ok_headers
from tests.support.pki import PROXY_ID, Pki
from tests.support.processes import free_port
from tests.support.tenants import MakeTenant, Tenant, admin_of_environment, internal_id_of
from tests.support.waiting import eventually

GET_CART = "/shop.v1.CartService/GetCart"


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


async def test_a_valid_key_is_allowed_and_the_upstream_learns_who_calls(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant, backends: Backends
) -> None:
    tenant = await make_sidecar_tenant()
    namespace = await tenant.namespace()
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    response = await Check(sidecar_channel)(
        check_request(
            GET_CART,
            {"authorization": bearer(reader.secret), "x-namespace": namespace.name,
             "x-request-id": "req-envoy-1"},
        )
    )  # fmt: skip
    assert response.status.code == grpc.StatusCode.OK.value[0]
    assert response.HasField("ok_response")
    assert ok_headers(response) == {
        "x-meshgate-organization-id": tenant.organization_id,
        "x-meshgate-namespace-id": namespace.namespace_id,
        "x-meshgate-key-id": reader.key.key_id,
        "x-meshgate-request-id": "req-envoy-1",
    }
    # the key goes no further than meshgate
    assert list(response.ok_response.headers_to_remove) == ["authorization"]
    client_headers = {o.header.key for o in response.ok_response.response_headers_to_add}
    assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= client_headers
    internal_id = await internal_id_of(tenant.organization_id, backends)
    assert internal_id.encode() not in response.SerializeToString()


async def test_forged_meshgate_headers_are_replaced_or_removed_never_trusted(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    tenant = await make_sidecar_tenant()
    victim = await make_sidecar_tenant()
    response = await Check(sidecar_channel)(
        check_request(
            "/shop.v1.CheckoutService/Pay",
            {
                "authorization": bearer(tenant.admin),
                "x-meshgate-organization-id": victim.organization_id,
                "x-meshgate-namespace-id": "ns_forged",
                "x-meshgate-internal-id": "0e5c7f1e-forged",
                "x-meshgate-key-id": victim.admin_key_id,
            },
        )
    )
    assert response.HasField("ok_response")
    options = {o.header.key: o for o in response.ok_response.headers}
    assert options["x-meshgate-organization-id"].header.value == tenant.organization_id
    assert options["x-meshgate-key-id"].header.value == tenant.admin_key_id
    overwrite = options["x-meshgate-key-id"].OVERWRITE_IF_EXISTS_OR_ADD
    assert all(o.append_action == overwrite for o in options.values())
    # a route without a namespace sets none: the forged one is removed, as is anything else
    assert set(response.ok_response.headers_to_remove) == {
        "x-meshgate-namespace-id",
        "x-meshgate-internal-id",
        "authorization",
    }


@pytest.mark.parametrize("raw", [False, True], ids=["joined", "header_map"])
@pytest.mark.parametrize("header", ["authorization", "x-namespace", "x-request-id"])
async def test_a_repeated_security_header_is_refused_as_meshgate_refuses_it(
    sidecar_channel: grpc.aio.Channel, tenant_with_reader: TenantKey, header: str, raw: bool
) -> None:
    """Envoy joins a repeated header's values with commas (or lists each in header_map):
    meshgate must not pick one while the upstream reads the other."""
    headers = [
        ("authorization", bearer(tenant_with_reader.secret)),
        ("x-namespace", tenant_with_reader.namespace),
        ("x-request-id", "req-1"),
    ]
    value = dict(headers)[header]
    response = await Check(sidecar_channel)(
        check_request(GET_CART, [*headers, (header, value)], raw_headers=raw)
    )
    assert response.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert response.status.message == f"the {header} header may appear only once"
    assert response.denied_response.status.code == 400
    assert denied_headers(response)["grpc-status"] == "3"


@dataclass
class TenantKey:
    tenant: Tenant
    secret: str
    key_id: str
    namespace: str
    namespace_id: str


@pytest.fixture
async def tenant_with_reader(make_sidecar_tenant: MakeTenant) -> TenantKey:
    tenant = await make_sidecar_tenant()
    namespace = await tenant.namespace()
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    return TenantKey(tenant, reader.secret, reader.key.key_id, namespace.name,
                     namespace.namespace_id)  # fmt: skip


async def test_revoked_unknown_and_malformed_keys_are_401_other_environments_see_no_namespace(
    sidecar_channel: grpc.aio.Channel, tenant_with_reader: TenantKey, backends: Backends
) -> None:
    tenant = tenant_with_reader.tenant
    revoked = await tenant.key(options_pb2.PERMISSION_READ)
    await tenant.keys.RevokeKey(
        key_service_pb2.RevokeKeyRequest(key_id=revoked.key.key_id), metadata=auth(tenant.admin)
    )
    production = await admin_of_environment(tenant, backends, "production")
    unknown = "mg_development_" + secrets.token_urlsafe(32)
    check = Check(sidecar_channel)
    for secret in (revoked.secret, unknown, "not-a-key"):
        response = await check(
            check_request(GET_CART, {"authorization": bearer(secret),
                                     "x-namespace": tenant_with_reader.namespace})
        )  # fmt: skip
        assert response.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert response.denied_response.status.code == 401
        assert response.denied_response.body == response.status.message
        headers = denied_headers(response)
        assert headers["grpc-status"] == "16"
        assert "x-request-id" in headers
    missing = await check(check_request(GET_CART, {"x-namespace": tenant_with_reader.namespace}))
    assert missing.denied_response.status.code == 401
    # a production key of the same organization: the development namespace is not in its
    # environment, so it does not exist for it (as on a direct call)
    elsewhere = await check(
        check_request(GET_CART, {"authorization": bearer(production),
                                 "x-namespace": tenant_with_reader.namespace})
    )  # fmt: skip
    assert elsewhere.denied_response.status.code == 404


async def test_a_foreign_namespace_is_404_whatever_the_upstream_is(
    sidecar_channel: grpc.aio.Channel, tenant_with_reader: TenantKey,
    make_sidecar_tenant: MakeTenant,
) -> None:  # fmt: skip
    other = await make_sidecar_tenant()
    foreign = await other.namespace()
    check = Check(sidecar_channel)
    for reference in (foreign.namespace_id, foreign.name):
        response = await check(
            check_request(GET_CART, {"authorization": bearer(tenant_with_reader.secret),
                                     "x-namespace": reference})
        )  # fmt: skip
        assert response.status.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert response.denied_response.status.code == 404


async def test_a_route_without_policy_is_denied(
    sidecar_channel: grpc.aio.Channel, tenant_with_reader: TenantKey
) -> None:
    headers = {"authorization": bearer(tenant_with_reader.secret),
               "x-namespace": tenant_with_reader.namespace}  # fmt: skip
    check = Check(sidecar_channel)
    refused = [
        check_request("/shop.v1.PaymentsService/Refund", headers),
        # an HTTP prefix route names its methods; others are not covered
        check_request("/api/orders/17", headers, method="DELETE", grpc_call=False),
        # a prefix cannot be escaped with dot segments or encoded slashes
        check_request("/api/orders/../admin", headers, method="GET", grpc_call=False),
        check_request("/api/orders%2f..%2fadmin", headers, method="GET", grpc_call=False),
        check_request("/api/ordersX", headers, method="GET", grpc_call=False),
        check_request("", headers),
    ]
    for request in refused:
        response = await check(request)
        assert response.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0], request
        assert response.denied_response.status.code == 403
    allowed = await check(
        check_request("/api/orders/17?expand=1", headers, method="GET", grpc_call=False)
    )
    assert allowed.HasField("ok_response")
    public = await check(check_request("/shop.v1.StatusService/Ping"))
    assert public.HasField("ok_response")
    assert "x-meshgate-organization-id" not in ok_headers(public)


async def test_callers_not_on_the_sidecar_allow_list_cannot_ask(
    direct_channel: grpc.aio.Channel, channel: grpc.aio.Channel, tenant_with_reader: TenantKey
) -> None:
    """A client (or a sidecar of a server that trusts none) could otherwise probe keys."""
    request = check_request(GET_CART, {"authorization": bearer(tenant_with_reader.secret),
                                       "x-namespace": tenant_with_reader.namespace})  # fmt: skip
    for ch in (direct_channel, channel):
        error = await rpc_error(Check(ch)(request))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == "this method is only available to trusted sidecars"


async def test_forwarded_identity_headers_do_not_make_a_client_a_sidecar(
    direct_channel: grpc.aio.Channel,
) -> None:
    """Only a configured proxy may forward an identity: a client that claims the sidecar's
    is refused before anything is decided."""
    call = raw_unary(direct_channel, "/envoy.service.auth.v3.Authorization/Check")
    error = await rpc_error(
        call(b"", metadata=(("x-forwarded-client-cert", f"URI={PROXY_ID}"),), timeout=10)
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_credits_are_debited_and_a_short_balance_is_429(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """The `tiny` plan has 20 credits a month; the Pay route costs 7."""
    tenant = await make_sidecar_tenant(plan="tiny")
    check = Check(sidecar_channel)
    pay = check_request("/shop.v1.CheckoutService/Pay", {"authorization": bearer(tenant.admin)})
    assert (await check(pay)).HasField("ok_response")
    assert (await check(pay)).HasField("ok_response")
    refused = await check(pay)
    assert refused.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert refused.denied_response.status.code == 429
    assert "credit" in refused.status.message


async def test_rate_limits_are_429_with_retry_after_and_ratelimit_headers(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """The `tiny` plan's admin class: a burst of 3, refilled once in 100 s."""
    tenant = await make_sidecar_tenant(plan="tiny")
    check = Check(sidecar_channel)
    request = check_request(
        "/shop.v1.AdminService/Reindex", {"authorization": bearer(tenant.admin)}
    )
    codes = [(await check(request)).status.code for _ in range(3)]
    assert codes == [0, 0, 0]
    refused = await check(request)
    assert refused.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert refused.status.message.startswith("rate limit exceeded for admin calls")
    assert refused.denied_response.status.code == 429
    headers = denied_headers(refused)
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit-remaining"] == "0"
    assert headers["grpc-status"] == "8"


async def test_the_sidecar_port_serves_the_same_server_with_the_same_mtls(
    settings: Settings, backends: Backends, pki: Pki
) -> None:
    """MESHGATE_SIDECAR_LISTEN: a second port for meshes that must not intercept the one the
    sidecars ask on; the same services, the same allow-list, the same client certificates."""
    port = free_port()
    own = replace(
        settings,
        sidecar_listen=f"127.0.0.1:{port}",
        ext_authz_peers=frozenset({PROXY_ID}),
        ext_authz_bindings=SidecarBindings.any_for(frozenset({PROXY_ID})),
        metrics_listen=None,
    )
    running = await create_server(own, backends)
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{port}", client_credentials(pki, "proxy")
        ) as sidecar:
            # no route policy file: every route is denied (fail closed)
            response = await Check(sidecar)(check_request(GET_CART))
            assert response.denied_response.status.code == 403
        async with grpc.aio.secure_channel(f"localhost:{port}", client_credentials(pki)) as client:
            error = await rpc_error(Check(client)(check_request(GET_CART)))
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        await running.stop(1.0)


async def test_judged_calls_join_the_organizations_audit_trail(
    sidecar_channel: grpc.aio.Channel, tenant_with_reader: TenantKey
) -> None:
    """An audited route's allowed call and an authenticated caller's denial are audit events,
    as on meshgate's own methods: the route as the method, the path as the resource, the
    source principal as the peer."""
    tenant = tenant_with_reader.tenant
    check = Check(sidecar_channel)
    path = "/shop.v1.CartService/AddItem"
    for secret in (tenant.admin, tenant_with_reader.secret):
        await check(
            check_request(path, {"authorization": bearer(secret),
                                 "x-namespace": tenant_with_reader.namespace})
        )  # fmt: skip
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)

    async def recorded() -> bool:
        page = await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(page_size=50), metadata=auth(tenant.admin)
        )
        found = {
            (e.actor_key_id, e.outcome, e.namespace_id)
            for e in page.events
            if e.method == "/shop.v1.CartService/*"
            and e.resource == path
            and e.actor_peer == CLIENT_PRINCIPAL
        }
        # the reader is refused by the permission step, before the namespace is resolved
        return found == {
            (tenant.admin_key_id, "OK", tenant_with_reader.namespace_id),
            (tenant_with_reader.key_id, "PERMISSION_DENIED", ""),
        }

    await eventually(recorded)
