"""Idle-key expiry: the policy through the API, and the job on two replicas at once with an
injected clock (days pass without sleeping); the key is refused by the real server."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import grpc
from google.protobuf.duration_pb2 import Duration
from meshgate.v1 import audit_service_pb2, audit_service_pb2_grpc, common_pb2, options_pb2
from meshgate.v1 import key_service_pb2 as key_pb
from meshgate.v1 import organization_service_pb2 as pb
from meshgate.v1 import organization_service_pb2_grpc as pb_grpc

from server.app import RunningServer
from server.backends import Backends
from server.workers.key_idle import CONFIRM, IdleKeys
from storage.core.clock import utc_now
from storage.tenancy.idle_keys import IdleKeyStore
from storage.tenancy.keys import KeyRecord, KeyStore
from tests.support.clients import auth, rpc_error
from tests.support.log_guard import NEVER_LOGGED
from tests.support.namespace_clients import Hooks
from tests.support.tenants import MakeTenant, Tenant, admin_of_environment
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver, new_endpoint_path


class Clock:
    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def policies(tenant: Tenant) -> pb_grpc.OrganizationServiceAsyncStub:
    return pb_grpc.OrganizationServiceStub(tenant.channel)


async def set_policy(tenant: Tenant, idle_days: int, notice_days: int = 0) -> pb.KeyIdlePolicy:
    response = await policies(tenant).SetKeyIdlePolicy(
        pb.SetKeyIdlePolicyRequest(
            policy=pb.KeyIdlePolicy(idle_days=idle_days, notice_days=notice_days)
        ),
        metadata=auth(tenant.admin),
    )
    return response.policy


class Replicas:
    """The job as two replicas run it: same stores, the injected clock."""

    def __init__(self, server: RunningServer, backends: Backends, clock: Clock) -> None:
        c = server.components
        self.clock = clock
        self.keys = KeyStore(mongo=backends.mongo, now=clock)
        self.idle = IdleKeyStore(mongo=backends.mongo, now=clock)
        self.jobs = [
            IdleKeys(
                organizations=c.organizations,
                idle=self.idle,
                events=c.events,
                audit=c.audit,
                invalidation=c.invalidation,
                now=clock,
            )
            for _ in range(2)
        ]

    async def key(self, tenant: Tenant) -> tuple[KeyRecord, str]:
        record, secret = await self.keys.create(
            organization_id=tenant.organization_id,
            name="idle candidate",
            environment=tenant.environment,
            permissions=frozenset({"read"}),
            namespace_ids=[],
            expires_at=None,
        )
        NEVER_LOGGED.add(secret)
        return record, secret

    async def used(self, *key_ids: str) -> None:
        """A use at the clock's time, as the verifier's batch writes it."""
        await self.keys.touch(dict.fromkeys(key_ids, self.clock()))

    async def round(self) -> None:
        await asyncio.gather(*(job.run_once() for job in self.jobs))


async def hook(tenant: Tenant, receiver: Receiver) -> tuple[Hooks, str]:
    namespace = await tenant.namespace()
    hooks, where = Hooks(tenant, namespace.name), new_endpoint_path()
    created = await hooks.create(receiver.url(where), ("key.expiring", "key.disabled"))
    receiver.endpoint(where, created.secret)
    return hooks, created.webhook.webhook_id


async def event_types(hooks: Hooks, webhook_id: str) -> list[str]:
    return sorted(d.event_type for d in await hooks.deliveries(webhook_id))


async def audited(tenant: Tenant, action: str, key_id: str) -> int:
    events = await audit_service_pb2_grpc.AuditServiceStub(tenant.channel).ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(action=action, resource=key_id),
        metadata=auth(tenant.admin),
    )
    return len(events.events)


async def test_an_idle_key_gets_one_notice_then_is_disabled_once_across_replicas(
    tenant: Tenant, server: RunningServer, backends: Backends, receiver: Receiver
) -> None:
    hooks, webhook_id = await hook(tenant, receiver)
    assert await set_policy(tenant, 30, 7) == pb.KeyIdlePolicy(
        environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
        idle_days=30,
        notice_days=7,
    )
    replicas = Replicas(server, backends, Clock())
    idle, idle_secret = await replicas.key(tenant)
    busy, busy_secret = await replicas.key(tenant)

    async def days_later(days: float) -> None:
        replicas.clock.advance(timedelta(days=days))
        await replicas.used(tenant.admin_key_id, busy.key_id)
        await replicas.round()

    await days_later(22)
    assert await event_types(hooks, webhook_id) == []
    await days_later(2)  # 24 days idle: within the 7 days' notice
    assert await event_types(hooks, webhook_id) == ["key.expiring"]
    await days_later(1)
    assert await event_types(hooks, webhook_id) == ["key.expiring"]  # once per idle period

    await days_later(6)  # 31 days: marked, not yet disabled (a late use could still come)
    got = await tenant.keys.GetKey(
        key_pb.GetKeyRequest(key_id=idle.key_id), metadata=auth(tenant.admin)
    )
    assert got.key.state == key_pb.KEY_STATE_ACTIVE
    replicas.clock.advance(CONFIRM)
    await replicas.round()
    await replicas.round()
    assert await event_types(hooks, webhook_id) == ["key.disabled", "key.expiring"]
    got = await tenant.keys.GetKey(
        key_pb.GetKeyRequest(key_id=idle.key_id), metadata=auth(tenant.admin)
    )
    assert got.key.state == key_pb.KEY_STATE_DISABLED and got.key.HasField("disable_time")
    # refused at once by the server, like any bad key; the busy key works
    error = await rpc_error(
        tenant.keys.ListKeys(key_pb.ListKeysRequest(), metadata=auth(idle_secret))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing or invalid API key"
    reader = pb_grpc.OrganizationServiceStub(tenant.channel)
    await reader.GetOrganization(pb.GetOrganizationRequest(), metadata=auth(busy_secret))

    async def audited_once() -> bool:
        return (
            await audited(tenant, "DisableKey", idle.key_id) == 1
            and await audited(tenant, "NoticeKeyExpiring", idle.key_id) == 1
        )

    await eventually(audited_once)


async def test_a_use_written_late_keeps_the_key(
    tenant: Tenant, server: RunningServer, backends: Backends
) -> None:
    """The key was used just before the first round saw it idle, and that use reached the
    store only with the next batch: the disabling write misses."""
    await set_policy(tenant, 1)
    replicas = Replicas(server, backends, Clock())
    record, secret = await replicas.key(tenant)
    replicas.clock.advance(timedelta(days=2))
    await replicas.used(tenant.admin_key_id)
    await replicas.round()  # seen idle: marked
    await replicas.used(record.key_id)  # the batch with the late use arrives
    replicas.clock.advance(CONFIRM)
    await replicas.used(tenant.admin_key_id)
    await replicas.round()
    await pb_grpc.OrganizationServiceStub(tenant.channel).GetOrganization(
        pb.GetOrganizationRequest(), metadata=auth(secret)
    )


async def test_a_disabling_whose_replica_died_is_announced_by_another(
    tenant: Tenant, server: RunningServer, backends: Backends, receiver: Receiver
) -> None:
    hooks, webhook_id = await hook(tenant, receiver)
    await set_policy(tenant, 1)
    replicas = Replicas(server, backends, Clock())
    record, _ = await replicas.key(tenant)
    replicas.clock.advance(timedelta(days=2))
    await replicas.used(tenant.admin_key_id)
    # a replica marks, disables, and dies before it publishes
    await replicas.idle.mark_idle(record)
    replicas.clock.advance(CONFIRM)
    assert await replicas.idle.disable(record, confirm=CONFIRM) is not None
    assert await replicas.idle.disable(record, confirm=CONFIRM) is None  # only one wins
    assert await event_types(hooks, webhook_id) == []
    await replicas.used(tenant.admin_key_id)
    await replicas.round()
    await replicas.round()
    assert await event_types(hooks, webhook_id) == ["key.disabled"]


async def test_the_policy_is_off_by_default_and_per_environment(
    make_tenant: MakeTenant, server: RunningServer, backends: Backends
) -> None:
    tenant = await make_tenant()
    got = await policies(tenant).GetKeyIdlePolicy(
        pb.GetKeyIdlePolicyRequest(), metadata=auth(tenant.admin)
    )
    assert got.policy.idle_days == 0
    replicas = Replicas(server, backends, Clock())
    _, secret = await replicas.key(tenant)
    replicas.clock.advance(timedelta(days=3650))
    await replicas.round()
    replicas.clock.advance(CONFIRM)
    await replicas.round()
    await pb_grpc.OrganizationServiceStub(tenant.channel).GetOrganization(
        pb.GetOrganizationRequest(), metadata=auth(secret)
    )
    # set for the caller's environment only, then turned off again
    await set_policy(tenant, 10, 3)
    staging = await admin_of_environment(tenant, backends, "staging")
    there = await policies(tenant).GetKeyIdlePolicy(
        pb.GetKeyIdlePolicyRequest(), metadata=auth(staging)
    )
    assert there.policy == pb.KeyIdlePolicy(environment=common_pb2.ENVIRONMENT_STAGING)
    assert await set_policy(tenant, 0) == pb.KeyIdlePolicy(
        environment=common_pb2.ENVIRONMENT_DEVELOPMENT
    )


async def test_only_a_key_that_reaches_every_key_sets_the_policy(tenant: Tenant) -> None:
    namespace = await tenant.namespace()
    restricted = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(namespace.name,))
    bound = await tenant.key(
        options_pb2.PERMISSION_ADMIN, bound_peers=("spiffe://meshgate.local/client/dev",)
    )
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    request = pb.SetKeyIdlePolicyRequest(policy=pb.KeyIdlePolicy(idle_days=1))
    for secret in (restricted.secret, bound.secret, reader.secret):
        error = await rpc_error(policies(tenant).SetKeyIdlePolicy(request, metadata=auth(secret)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    for idle_days, notice_days in ((-1, 0), (3651, 0), (5, 5), (5, -1), (0, 2)):
        bad = pb.SetKeyIdlePolicyRequest(
            policy=pb.KeyIdlePolicy(idle_days=idle_days, notice_days=notice_days)
        )
        error = await rpc_error(policies(tenant).SetKeyIdlePolicy(bad, metadata=auth(tenant.admin)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_keys_filters_keys_idle_for_longer_than_a_duration(
    tenant: Tenant, backends: Backends
) -> None:
    month_ago = utc_now() - timedelta(days=40)
    old, _ = await KeyStore(mongo=backends.mongo, now=lambda: month_ago).create(
        organization_id=tenant.organization_id,
        name="old",
        environment=tenant.environment,
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=None,
    )
    used_then, _ = await KeyStore(mongo=backends.mongo, now=lambda: month_ago).create(
        organization_id=tenant.organization_id,
        name="used since",
        environment=tenant.environment,
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=None,
    )
    await KeyStore(mongo=backends.mongo).touch({used_then.key_id: utc_now() - timedelta(days=1)})

    async def idle_for(days: int) -> set[str]:
        listed = await tenant.keys.ListKeys(
            key_pb.ListKeysRequest(idle_for=Duration(seconds=days * 86400)),
            metadata=auth(tenant.admin),
        )
        return {k.key_id for k in listed.keys}

    assert await idle_for(30) == {old.key_id}
    assert await idle_for(0) >= {old.key_id, used_then.key_id}
    assert await idle_for(50) == set()
    error = await rpc_error(
        tenant.keys.ListKeys(
            key_pb.ListKeysRequest(idle_for=Duration(seconds=-1)), metadata=auth(tenant.admin)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
