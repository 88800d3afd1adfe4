"""Organization events (`key.revoked`, `credits.threshold`) through real webhooks.

They belong to an organization, webhooks to a namespace: each event reaches the
subscribed webhooks of the namespaces it concerns, signed, once, and never
another organization's.
"""

from __future__ import annotations

import json

from meshgate.v1 import document_service_pb2, key_service_pb2, options_pb2, usage_service_pb2
from meshgate.v1 import usage_service_pb2_grpc as usage_grpc
from meshgate.v1 import webhook_service_pb2 as pb

from server.backends import Backends
from storage.core.clock import utc_now
from storage.metering.credits import CreditAccounts, period_of
from storage.tenancy.organizations import OrganizationStore
from tests.support.clients import auth
from tests.support.namespace_clients import Docs, Hooks, doc
from tests.support.tenants import MakeTenant, Tenant
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver, new_endpoint_path


async def hook(
    tenant: Tenant, receiver: Receiver, namespace: str, *types: str
) -> tuple[Hooks, str, str]:
    """A webhook of `namespace` on a new receiver endpoint: its caller, id and path."""
    hooks, where = Hooks(tenant, namespace), new_endpoint_path()
    created = await hooks.create(receiver.url(where), types)
    receiver.endpoint(where, created.secret)
    return hooks, created.webhook.webhook_id, where


async def test_key_revoked_reaches_the_namespaces_the_key_could_act_in(
    make_tenant: MakeTenant, receiver: Receiver, backends: Backends
) -> None:
    tenant, stranger = await make_tenant(), await make_tenant()
    ns1, ns2, theirs = (
        await tenant.namespace(),
        await tenant.namespace(),
        await stranger.namespace(),
    )
    hooks1, id1, where1 = await hook(tenant, receiver, ns1.name, "key.revoked")
    hooks2, id2, where2 = await hook(tenant, receiver, ns2.name, "*")
    hooks3, id3, _ = await hook(stranger, receiver, theirs.name, "key.revoked")
    restricted = await tenant.key(options_pb2.PERMISSION_READ, namespaces=(ns1.namespace_id,))
    everywhere = await tenant.key(options_pb2.PERMISSION_READ)

    for created in (restricted, everywhere, restricted):  # the last one repeats a revocation
        await tenant.keys.RevokeKey(
            key_service_pb2.RevokeKeyRequest(key_id=created.key.key_id),
            metadata=auth(tenant.admin),
        )
    # the fan-out is done when RevokeKey answers: these counts are final
    assert len(await hooks1.deliveries(id1)) == 2  # both keys could act in ns1, once each
    assert len(await hooks2.deliveries(id2)) == 1  # only the unrestricted one in ns2
    assert await hooks3.deliveries(id3) == []  # never another organization's

    await eventually(lambda: receiver.delivered_at_least(where1, 2))
    payloads = [r.payload for r in receiver.delivered(where1).values()]
    assert all(r.valid for r in receiver.requests(where1))
    assert {p["type"] for p in payloads} == {"key.revoked"}
    assert {p["data"]["key_id"] for p in payloads} == {
        restricted.key.key_id,
        everywhere.key.key_id,
    }
    assert {p["data"]["organization_id"] for p in payloads} == {tenant.organization_id}
    organization = await OrganizationStore(mongo=backends.mongo).get(tenant.organization_id)
    assert all(organization.internal_id not in json.dumps(p) for p in payloads)
    await eventually(lambda: receiver.delivered_at_least(where2, 1))


async def test_credits_threshold_reaches_every_namespace_once(
    tenant: Tenant, receiver: Receiver, backends: Backends
) -> None:
    ns1, ns2 = await tenant.namespace(), await tenant.namespace()
    hooks1, id1, where1 = await hook(tenant, receiver, ns1.name, "credits.threshold")
    hooks2, id2, _ = await hook(tenant, receiver, ns2.name, "task.completed")
    usage = usage_grpc.UsageServiceStub(tenant.channel)
    await usage.GetCreditBalance(
        usage_service_pb2.GetCreditBalanceRequest(), metadata=auth(tenant.admin)
    )
    # a 3-credit month (test set-up, straight in Redis): the third call crosses every threshold
    key = CreditAccounts.key(tenant.organization_id, period_of(utc_now()))
    await backends.redis.hset(key, mapping={"balance": 3, "allowance": 3})
    docs = Docs(tenant, ns1.name)
    for i in range(3):
        await docs.stub.CreateDocument(
            document_service_pb2.CreateDocumentRequest(document=doc(f"d{i}")), metadata=docs.md
        )
    await eventually(lambda: receiver.delivered_at_least(where1, 3))
    payloads = sorted(
        (r.payload for r in receiver.delivered(where1).values()),
        key=lambda p: p["data"]["threshold"],
    )
    assert [p["data"]["threshold"] for p in payloads] == [80, 95, 100]
    assert {p["type"] for p in payloads} == {"credits.threshold"}
    assert {p["data"]["total"] for p in payloads} == {3}
    assert await hooks2.deliveries(id2) == []  # not subscribed
    assert len(await hooks1.deliveries(id1, pb.DELIVERY_STATUS_SUCCEEDED)) == 3
