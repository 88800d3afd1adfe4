"""Workload-bound keys through the real server: other certificates, trusted and untrusted
proxies, forged forwarding headers, sibling paths, and the binding's own management."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from meshgate.v1 import audit_service_pb2, audit_service_pb2_grpc, options_pb2
from meshgate.v1 import key_service_pb2 as pb
from meshgate.v1 import key_service_pb2_grpc as pb_grpc

from calls.policy import Access, Policy
from calls.state import CallState
from certs.dev_pki import CLIENT_ID, INTERNAL_ID
from interceptors.authentication import Authentication
from server.app import RunningServer
from tests.support.clients import auth, client_credentials, rpc_error
from tests.support.pki import Pki
from tests.support.tenants import Tenant
from tests.support.waiting import eventually

BAD_KEY = "missing or invalid API key"
ORDERS = "spiffe://meshgate.local/ns/orders/*"


@pytest.fixture
async def as_internal(
    server: RunningServer, pki: Pki
) -> AsyncIterator[pb_grpc.KeyServiceAsyncStub]:
    """Another workload of the mesh: the internal certificate (same CA, another identity)."""
    async with grpc.aio.secure_channel(
        f"localhost:{server.port}", client_credentials(pki, "internal")
    ) as channel:
        yield pb_grpc.KeyServiceStub(channel)


@pytest.fixture
async def via_proxy(server: RunningServer, pki: Pki) -> AsyncIterator[pb_grpc.KeyServiceAsyncStub]:
    """The trusted sidecar (MESHGATE_TRUSTED_PROXIES lists its identity)."""
    async with grpc.aio.secure_channel(
        f"localhost:{server.port}", client_credentials(pki, "proxy")
    ) as channel:
        yield pb_grpc.KeyServiceStub(channel)


async def unauthenticated(call: object) -> None:
    error = await rpc_error(call)  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert error.details() == BAD_KEY


async def bound_admin(tenant: Tenant, *entries: str) -> pb.CreateKeyResponse:
    return await tenant.key(options_pb2.PERMISSION_ADMIN, bound_peers=entries)


def get_self(key: pb.CreateKeyResponse) -> pb.GetKeyRequest:
    return pb.GetKeyRequest(key_id=key.key.key_id)


async def test_a_bound_key_from_another_client_certificate_is_a_bad_key(
    tenant: Tenant, as_internal: pb_grpc.KeyServiceAsyncStub
) -> None:
    bound = await bound_admin(tenant, CLIENT_ID)
    assert list(bound.key.bound_peers) == [CLIENT_ID]
    ok = await tenant.keys.GetKey(get_self(bound), metadata=auth(bound.secret))
    assert ok.key.bound_peers == [CLIENT_ID]
    for _ in range(2):  # refused from the store, then with the key cached
        await unauthenticated(as_internal.GetKey(get_self(bound), metadata=auth(bound.secret)))
    # exactly what any bad key gets
    await unauthenticated(as_internal.GetKey(get_self(bound), metadata=auth("mg_dev_nope")))
    # the owner's certificate still works: the key was not harmed by the attempts
    await tenant.keys.GetKey(get_self(bound), metadata=auth(bound.secret))

    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)

    async def denial_audited() -> bool:
        events = await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(actor_key_id=bound.key.key_id),
            metadata=auth(tenant.admin),
        )
        return any(
            e.outcome == "UNAUTHENTICATED" and e.actor_peer == INTERNAL_ID for e in events.events
        )

    await eventually(denial_audited)


async def test_a_trusted_proxy_forwards_the_right_or_the_wrong_identity(
    tenant: Tenant, via_proxy: pb_grpc.KeyServiceAsyncStub
) -> None:
    bound = await bound_admin(tenant, ORDERS)
    web = "spiffe://meshgate.local/ns/orders/sa/web"
    for header, value in (
        ("x-forwarded-client-cert", f'By={CLIENT_ID};Subject="CN=web";URI={web}'),
        ("l5d-client-id", web),
    ):
        await via_proxy.GetKey(get_self(bound), metadata=auth(bound.secret, **{header: value}))
    for header, value in (
        ("x-forwarded-client-cert", f"URI={INTERNAL_ID}"),
        ("l5d-client-id", INTERNAL_ID),
        # the nearest client is the last element: an earlier hop's identity does not count
        ("x-forwarded-client-cert", f"URI={web},URI={INTERNAL_ID}"),
        # a sibling of the bound path, and path tricks
        ("x-forwarded-client-cert", "URI=spiffe://meshgate.local/ns/orders-evil/x"),
        ("l5d-client-id", "spiffe://meshgate.local/ns/orders/../admin"),
        ("l5d-client-id", "spiffe://meshgate.local/ns/orders"),
        ("x-forwarded-client-cert", "Hash=abc"),  # no identity at all
    ):
        await unauthenticated(
            via_proxy.GetKey(get_self(bound), metadata=auth(bound.secret, **{header: value}))
        )
    # the proxy forwarding nothing is itself the peer, and is not bound
    await unauthenticated(via_proxy.GetKey(get_self(bound), metadata=auth(bound.secret)))


async def test_a_forged_forwarding_header_from_an_untrusted_peer_is_refused(
    tenant: Tenant, as_internal: pb_grpc.KeyServiceAsyncStub
) -> None:
    bound = await bound_admin(tenant, CLIENT_ID)
    for header, value in (
        ("x-forwarded-client-cert", f"URI={CLIENT_ID}"),
        ("l5d-client-id", CLIENT_ID),
    ):
        error = await rpc_error(
            as_internal.GetKey(get_self(bound), metadata=auth(bound.secret, **{header: value}))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "trusted proxy" in (error.details() or "")


async def test_a_pattern_does_not_match_a_sibling_path(
    tenant: Tenant, via_proxy: pb_grpc.KeyServiceAsyncStub
) -> None:
    sibling = await bound_admin(tenant, "spiffe://meshgate.local/client/*")
    await tenant.keys.GetKey(get_self(sibling), metadata=auth(sibling.secret))  # client/dev
    narrow = await bound_admin(tenant, "spiffe://meshgate.local/client/de/*")
    await unauthenticated(tenant.keys.GetKey(get_self(narrow), metadata=auth(narrow.secret)))
    evil = "spiffe://meshgate.local/client-evil/dev"
    await unauthenticated(
        via_proxy.GetKey(
            get_self(sibling), metadata=auth(sibling.secret, **{"l5d-client-id": evil})
        )
    )


async def test_malformed_bindings_are_invalid_argument(tenant: Tenant) -> None:
    for entries in (("spiffe://meshgate.local/ns/orders-*",), ("spiffe://*/x",), ("a b",)):
        error = await rpc_error(tenant.key(bound_peers=entries))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_set_key_binding_takes_effect_at_once_and_is_audited(
    tenant: Tenant, as_internal: pb_grpc.KeyServiceAsyncStub
) -> None:
    # warm the cache from the other workload: the key is unbound
    admin_there = await tenant.key(options_pb2.PERMISSION_ADMIN)
    request = get_self(admin_there)
    await as_internal.GetKey(request, metadata=auth(admin_there.secret))
    bound = await tenant.keys.SetKeyBinding(
        pb.SetKeyBindingRequest(key_id=admin_there.key.key_id, bound_peers=[CLIENT_ID]),
        metadata=auth(tenant.admin),
    )
    assert list(bound.key.bound_peers) == [CLIENT_ID]
    await unauthenticated(as_internal.GetKey(request, metadata=auth(admin_there.secret)))
    await tenant.keys.GetKey(request, metadata=auth(admin_there.secret))
    unbound = await tenant.keys.SetKeyBinding(
        pb.SetKeyBindingRequest(key_id=admin_there.key.key_id), metadata=auth(tenant.admin)
    )
    assert list(unbound.key.bound_peers) == []
    await as_internal.GetKey(request, metadata=auth(admin_there.secret))

    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)

    async def changes_audited() -> bool:
        events = await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(
                action="SetKeyBinding", resource=admin_there.key.key_id
            ),
            metadata=auth(tenant.admin),
        )
        return [e.outcome for e in events.events] == ["OK", "OK"]

    await eventually(changes_audited)


async def test_a_bound_key_cannot_step_out_of_its_binding(tenant: Tenant) -> None:
    """Through the keys it manages: it cannot mint an unbound key or one bound elsewhere,
    nor unbind or rebind a key, nor see an unbound key (NOT_FOUND, as for any key beyond
    its reach)."""
    bound = await bound_admin(tenant, CLIENT_ID, ORDERS)
    for entries in ((), (INTERNAL_ID,), (CLIENT_ID, INTERNAL_ID)):
        error = await rpc_error(
            tenant.key(options_pb2.PERMISSION_READ, bound_peers=entries, creator=bound.secret)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    child = await tenant.key(
        options_pb2.PERMISSION_READ, bound_peers=(ORDERS,), creator=bound.secret
    )
    for rebinding in ([], [INTERNAL_ID]):
        error = await rpc_error(
            tenant.keys.SetKeyBinding(
                pb.SetKeyBindingRequest(key_id=child.key.key_id, bound_peers=rebinding),
                metadata=auth(bound.secret),
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await tenant.keys.SetKeyBinding(
        pb.SetKeyBindingRequest(key_id=child.key.key_id, bound_peers=[CLIENT_ID]),
        metadata=auth(bound.secret),
    )
    unbound = await tenant.key(options_pb2.PERMISSION_READ)
    for call in (
        tenant.keys.GetKey(
            pb.GetKeyRequest(key_id=unbound.key.key_id), metadata=auth(bound.secret)
        ),
        tenant.keys.RotateKey(
            pb.RotateKeyRequest(key_id=unbound.key.key_id), metadata=auth(bound.secret)
        ),
        tenant.keys.SetKeyBinding(
            pb.SetKeyBindingRequest(key_id=unbound.key.key_id, bound_peers=[CLIENT_ID]),
            metadata=auth(bound.secret),
        ),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await tenant.keys.ListKeys(pb.ListKeysRequest(), metadata=auth(bound.secret))
    assert {k.key_id for k in listed.keys} == {bound.key.key_id, child.key.key_id}


async def test_only_a_bound_key_makes_the_call_resolve_its_peer(
    tenant: Tenant, server: RunningServer
) -> None:
    """The peer's certificate is read lazily: the authentication step asks for it only when
    the key is bound (an unbound key's call never pays for it)."""
    unbound = await tenant.key()
    bound = await tenant.key(bound_peers=(CLIENT_ID,))
    step = Authentication(verifier=server.verifier)
    for created, peer_read in ((unbound, False), (bound, True)):
        resolved: list[bool] = []

        def resolve(seen: list[bool] = resolved) -> str:
            seen.append(True)
            return CLIENT_ID

        call = CallState(
            method="/meshgate.v1.OrganizationService/GetOrganization",
            policy=Policy(access=Access.API_KEY, permission="read"),
            request_id="r",
            metadata={"authorization": f"Bearer {created.secret}"},
            peer_address="ipv4:127.0.0.1:1",
        )
        call.set_peer_identity(resolve=resolve)
        for _ in range(2):  # from the store, then from the cache
            pending = step.check(call, cast(Any, None))
            if pending is not None:
                await pending
            assert call.key is not None and call.key.key_id == created.key.key_id
        assert resolved == ([True] if peer_read else [])
