"""KeyService through the real server: lifecycle, paging, and bad input."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from meshgate.v1 import common_pb2, namespace_service_pb2, options_pb2
from meshgate.v1 import key_service_pb2 as pb

from server.app import RunningServer
from server.backends import Backends
from storage.core.key_secrets import parse_secret
from storage.tenancy.keys import PERMISSIONS, KeyReach
from tests.support.clients import auth
from tests.support.tenants import MakeTenant, Tenant


async def invalid(call: Awaitable[object]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details() or ""


async def test_create_returns_the_secret_once(tenant: Tenant, backends: Backends) -> None:
    created = await tenant.key(options_pb2.PERMISSION_READ, options_pb2.PERMISSION_WRITE)
    parsed = parse_secret(created.secret)
    assert parsed is not None and parsed.environment == "development"
    assert created.secret.startswith(created.key.display_prefix)
    assert list(created.key.permissions) == [
        options_pb2.PERMISSION_READ,
        options_pb2.PERMISSION_WRITE,
    ]
    assert created.key.state == pb.KEY_STATE_ACTIVE
    got = await tenant.keys.GetKey(
        pb.GetKeyRequest(key_id=created.key.key_id), metadata=auth(tenant.admin)
    )
    assert got.key == created.key
    assert created.secret not in str(got)
    # only the digest is stored
    stored = await backends.mongo.keys.find_one({"_id": created.key.key_id})
    assert stored is not None and created.secret not in repr(stored)
    assert stored["secrets"][0]["digest"] == parsed.digest


async def test_list_keys_pages_through_every_key_once(tenant: Tenant) -> None:
    created = {tenant.admin_key_id}
    for _ in range(5):
        created.add((await tenant.key()).key.key_id)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await tenant.keys.ListKeys(
            pb.ListKeysRequest(page_size=2, page_token=token), metadata=auth(tenant.admin)
        )
        pages += 1
        seen.extend(k.key_id for k in page.keys)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(created)


async def test_keys_of_other_organizations_are_invisible(make_tenant: MakeTenant) -> None:
    alice: Tenant = await make_tenant()
    mallory: Tenant = await make_tenant()
    victim = await alice.key()
    for call in (
        mallory.keys.GetKey(
            pb.GetKeyRequest(key_id=victim.key.key_id), metadata=auth(mallory.admin)
        ),
        mallory.keys.RevokeKey(
            pb.RevokeKeyRequest(key_id=victim.key.key_id), metadata=auth(mallory.admin)
        ),
        mallory.keys.RotateKey(
            pb.RotateKeyRequest(key_id=victim.key.key_id), metadata=auth(mallory.admin)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await mallory.keys.ListKeys(pb.ListKeysRequest(), metadata=auth(mallory.admin))
    assert victim.key.key_id not in {k.key_id for k in listed.keys}
    got = await alice.keys.GetKey(
        pb.GetKeyRequest(key_id=victim.key.key_id), metadata=auth(alice.admin)
    )
    assert got.key.state == pb.KEY_STATE_ACTIVE


async def test_revoke_is_idempotent_and_visible(tenant: Tenant) -> None:
    created = await tenant.key()
    request = pb.RevokeKeyRequest(key_id=created.key.key_id)
    first = await tenant.keys.RevokeKey(request, metadata=auth(tenant.admin))
    second = await tenant.keys.RevokeKey(request, metadata=auth(tenant.admin))
    assert first.key.state == second.key.state == pb.KEY_STATE_REVOKED
    assert first.key.revoke_time == second.key.revoke_time
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.keys.RotateKey(
            pb.RotateKeyRequest(key_id=created.key.key_id), metadata=auth(tenant.admin)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rotation_reports_the_grace_deadline(tenant: Tenant) -> None:
    created = await tenant.key()
    rotated = await tenant.keys.RotateKey(
        pb.RotateKeyRequest(key_id=created.key.key_id, grace_period=Duration(seconds=3600)),
        metadata=auth(tenant.admin),
    )
    assert rotated.secret != created.secret
    assert (
        rotated.key.display_prefix != created.key.display_prefix
        or rotated.secret[:13] == created.secret[:13]
    )
    delta = rotated.previous_secret_expire_time.ToSeconds() - rotated.key.rotate_time.ToSeconds()
    assert delta == 3600


async def test_bad_input_is_invalid_argument(tenant: Tenant) -> None:
    md = auth(tenant.admin)
    create = tenant.keys.CreateKey
    good: dict[str, Any] = {
        "name": "k",
        "environment": common_pb2.ENVIRONMENT_DEVELOPMENT,
        "permissions": [options_pb2.PERMISSION_READ],
    }
    assert "environment" in await invalid(
        create(pb.CreateKeyRequest(**{**good, "environment": 0}), metadata=md)
    )
    assert "environment" in await invalid(
        create(pb.CreateKeyRequest(**{**good, "environment": 99}), metadata=md)
    )
    assert "permissions" in await invalid(
        create(pb.CreateKeyRequest(**{**good, "permissions": []}), metadata=md)
    )
    assert "permissions" in await invalid(
        create(pb.CreateKeyRequest(**{**good, "permissions": [0]}), metadata=md)
    )
    assert "name" in await invalid(create(pb.CreateKeyRequest(**{**good, "name": ""}), metadata=md))
    assert "name" in await invalid(
        create(pb.CreateKeyRequest(**{**good, "name": "x" * 65}), metadata=md)
    )
    assert "name" in await invalid(
        create(pb.CreateKeyRequest(**{**good, "name": "bad\nname"}), metadata=md)
    )
    assert "at most 100" in await invalid(
        create(pb.CreateKeyRequest(**good, namespaces=[f"ns-{i}" for i in range(101)]), metadata=md)
    )
    assert "key_id" in await invalid(
        tenant.keys.GetKey(pb.GetKeyRequest(key_id="' or 1=1"), metadata=md)
    )
    assert "key_id" in await invalid(tenant.keys.GetKey(pb.GetKeyRequest(key_id=""), metadata=md))
    assert "page_token" in await invalid(
        tenant.keys.ListKeys(pb.ListKeysRequest(page_token="garbage!"), metadata=md)
    )
    assert "page_size" in await invalid(
        tenant.keys.ListKeys(pb.ListKeysRequest(page_size=-1), metadata=md)
    )
    assert "page_size" in await invalid(
        tenant.keys.ListKeys(pb.ListKeysRequest(page_size=201), metadata=md)
    )
    assert "grace_period" in await invalid(
        tenant.keys.RotateKey(
            pb.RotateKeyRequest(key_id=tenant.admin_key_id, grace_period=Duration(seconds=-1)),
            metadata=md,
        )
    )
    assert "grace_period" in await invalid(
        tenant.keys.RotateKey(
            pb.RotateKeyRequest(
                key_id=tenant.admin_key_id, grace_period=Duration(seconds=31 * 86400)
            ),
            metadata=md,
        )
    )
    # a namespace that does not exist cannot be granted
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create(pb.CreateKeyRequest(**good, namespaces=["nowhere"]), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_page_token_of_another_list_is_refused(tenant: Tenant) -> None:
    for _ in range(3):
        await tenant.namespace()
    page = await tenant.namespaces.ListNamespaces(
        namespace_service_pb2.ListNamespacesRequest(page_size=1), metadata=auth(tenant.admin)
    )
    assert page.next_page_token
    assert "page_token" in await invalid(
        tenant.keys.ListKeys(
            pb.ListKeysRequest(page_token=page.next_page_token), metadata=auth(tenant.admin)
        )
    )


async def test_cannot_create_keys_of_another_environment(tenant: Tenant) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.keys.CreateKey(
            pb.CreateKeyRequest(
                name="prod",
                environment=common_pb2.ENVIRONMENT_PRODUCTION,
                permissions=[options_pb2.PERMISSION_ADMIN],
            ),
            metadata=auth(tenant.admin),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_last_used_time_is_recorded(tenant: Tenant, server: RunningServer) -> None:
    from meshgate.v1 import organization_service_pb2, organization_service_pb2_grpc

    created = await tenant.key()
    assert not created.key.HasField("last_used_time")
    stub = organization_service_pb2_grpc.OrganizationServiceStub(tenant.channel)
    await stub.GetOrganization(
        organization_service_pb2.GetOrganizationRequest(), metadata=auth(created.secret)
    )
    await server.verifier.flush_last_used()  # the server does this every 30 s, off the hot path
    got = await tenant.keys.GetKey(
        pb.GetKeyRequest(key_id=created.key.key_id), metadata=auth(tenant.admin)
    )
    assert got.key.HasField("last_used_time")
    assert got.key.last_used_time.ToSeconds() >= created.key.create_time.ToSeconds()


async def all_key_ids(tenant: Tenant, secret: str) -> list[str]:
    """Every key ListKeys shows to `secret`, one key per page: no page may come back empty."""
    seen: list[str] = []
    token = ""
    while True:
        page = await tenant.keys.ListKeys(
            pb.ListKeysRequest(page_size=1, page_token=token), metadata=auth(secret)
        )
        assert len(page.keys) == 1, "a page filtered after the read would come back short"
        seen.extend(k.key_id for k in page.keys)
        token = page.next_page_token
        if not token:
            return seen


async def test_a_restricted_admin_key_cannot_reach_the_unrestricted_admin_key(
    tenant: Tenant,
) -> None:
    """The review's reproduction: an ADMIN key limited to namespace A lists, reads, rotates
    (grace 0) and revokes the organization-wide ADMIN key. All of it is NOT_FOUND now, and
    the owner's secret keeps working in namespace B."""
    ns_a, ns_b = await tenant.namespace(), await tenant.namespace()
    restricted = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(ns_a.name,))
    md = auth(restricted.secret)
    victim = tenant.admin_key_id
    assert victim not in await all_key_ids(tenant, restricted.secret)
    for call in (
        tenant.keys.GetKey(pb.GetKeyRequest(key_id=victim), metadata=md),
        tenant.keys.RotateKey(
            pb.RotateKeyRequest(key_id=victim, grace_period=Duration(seconds=0)), metadata=md
        ),
        tenant.keys.RevokeKey(pb.RevokeKeyRequest(key_id=victim), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "key not found"
    owner = await tenant.namespaces.GetNamespace(
        namespace_service_pb2.GetNamespaceRequest(), metadata=auth(tenant.admin, ns_b.name)
    )
    assert owner.namespace.namespace_id == ns_b.namespace_id
    got = await tenant.keys.GetKey(pb.GetKeyRequest(key_id=victim), metadata=auth(tenant.admin))
    assert got.key.state == pb.KEY_STATE_ACTIVE and not got.key.HasField("rotate_time")


async def test_a_key_sees_and_manages_exactly_the_keys_within_its_reach(tenant: Tenant) -> None:
    """Reach: permissions no higher (ADMIN implies all) and, for a restricted key, a
    non-empty allow-list inside its own. ListKeys filters in the store: with out-of-reach
    keys between the reachable ones, every page of one key is full."""
    ns_a, ns_b = await tenant.namespace(), await tenant.namespace()
    restricted = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(ns_a.name,))
    within = {restricted.key.key_id}
    beyond = {tenant.admin_key_id}
    for _ in range(3):
        within.add((await tenant.key(namespaces=(ns_a.name,))).key.key_id)
        beyond.add((await tenant.key()).key.key_id)  # unrestricted READ: every namespace
        beyond.add((await tenant.key(namespaces=(ns_a.name, ns_b.name))).key.key_id)
        beyond.add((await tenant.key(namespaces=(ns_b.name,))).key.key_id)
    assert sorted(await all_key_ids(tenant, restricted.secret)) == sorted(within)
    assert set(await all_key_ids(tenant, tenant.admin)) >= within | beyond  # unrestricted
    md = auth(restricted.secret)
    for key_id in beyond:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tenant.keys.RevokeKey(pb.RevokeKeyRequest(key_id=key_id), metadata=md)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    mine = sorted(within - {restricted.key.key_id})[0]
    rotated = await tenant.keys.RotateKey(pb.RotateKeyRequest(key_id=mine), metadata=md)
    assert rotated.secret
    revoked = await tenant.keys.RevokeKey(pb.RevokeKeyRequest(key_id=mine), metadata=md)
    assert revoked.key.state == pb.KEY_STATE_REVOKED
    # CreateKey keeps the same rule: nothing wider than the creator
    for namespaces in ((), (ns_a.name, ns_b.name), (ns_b.name,)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tenant.keys.CreateKey(
                pb.CreateKeyRequest(
                    name="wider",
                    environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                    permissions=[options_pb2.PERMISSION_READ],
                    namespaces=list(namespaces),
                ),
                metadata=md,
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_reach_compares_permissions_with_admin_implying_all() -> None:
    """The permission half of the rule, which KeyService (ADMIN only) never narrows."""
    writer = KeyReach(permissions=frozenset({"read", "write"}), namespace_ids=frozenset())
    assert writer.covers(permissions=frozenset({"read"}), namespace_ids=frozenset())
    assert not writer.covers(permissions=frozenset({"delete"}), namespace_ids=frozenset())
    assert not writer.covers(permissions=frozenset({"admin"}), namespace_ids=frozenset())
    admin = KeyReach(permissions=frozenset({"admin"}), namespace_ids=frozenset({"ns_a"}))
    assert admin.covers(permissions=frozenset(PERMISSIONS), namespace_ids=frozenset({"ns_a"}))
    assert not admin.covers(permissions=frozenset({"read"}), namespace_ids=frozenset())


async def test_set_key_rate_limit_replaces_or_clears_a_limit_within_reach(tenant: Tenant) -> None:
    target = await tenant.key(options_pb2.PERMISSION_READ)
    key_id = target.key.key_id
    md = auth(tenant.admin)
    limit = pb.RateLimit(per_second=2, burst=4, dry_run=True)
    changed = await tenant.keys.SetKeyRateLimit(
        pb.SetKeyRateLimitRequest(key_id=key_id, rate_limit=limit), metadata=md
    )
    assert changed.key.rate_limit == limit
    got = await tenant.keys.GetKey(pb.GetKeyRequest(key_id=key_id), metadata=md)
    assert got.key.rate_limit == limit
    message = await invalid(
        tenant.keys.SetKeyRateLimit(
            pb.SetKeyRateLimitRequest(key_id=key_id, rate_limit=pb.RateLimit(burst=4)),
            metadata=md,
        )
    )
    assert message.startswith("rate_limit: per_second must be between")
    cleared = await tenant.keys.SetKeyRateLimit(
        pb.SetKeyRateLimitRequest(key_id=key_id), metadata=md
    )
    assert not cleared.key.HasField("rate_limit")
    # a key beyond the caller's reach (the organization-wide ADMIN key, for an ADMIN key
    # restricted to a namespace) is NOT_FOUND, as for every other KeyService call
    namespace = await tenant.namespace()
    restricted = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(namespace.name,))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.keys.SetKeyRateLimit(
            pb.SetKeyRateLimitRequest(key_id=tenant.admin_key_id, rate_limit=limit),
            metadata=auth(restricted.secret),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
