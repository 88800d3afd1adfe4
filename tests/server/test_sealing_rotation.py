"""The webhook sealing key rotated twice, through server restarts with new key settings:
every webhook keeps delivering events its receiver verifies with the webhook's secret."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import grpc

from server.app import RunningServer
from server.backends import Backends
from server.settings import Secret, Settings
from tests.support.namespace_clients import Hooks, Tasks, doc
from tests.support.pki import Pki
from tests.support.servers import serving as serving_with
from tests.support.tenants import Tenant, create_tenant
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver


def new_key(kid: str) -> str:
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


@asynccontextmanager
async def serving(
    settings: Settings, pki: Pki, keys: str
) -> AsyncIterator[tuple[RunningServer, Backends, grpc.aio.Channel]]:
    """A server whose webhook secrets are sealed with `keys` (primary first)."""
    configured = replace(settings, webhook_secret_key=None, webhook_secret_keys=Secret(keys))
    async with serving_with(configured, pki) as served:
        yield served


async def delivered(tenant: Tenant, namespace: str, receiver: Receiver, where: str, n: int) -> None:
    await Tasks(tenant, namespace).submit([doc(f"d{n}")])
    await eventually(lambda: receiver.delivered_at_least(where, n), timeout_s=15)
    assert all(r.valid for r in receiver.requests(where))  # verified with the webhook's secret


async def test_two_key_rotations_keep_webhooks_delivering(
    settings: Settings, pki: Pki, receiver: Receiver
) -> None:
    # a database of its own: the session server must not run these deliveries with its key
    settings = replace(settings, mongodb_database=f"meshgate_sealing_{secrets.token_hex(4)}")
    k1, k2, k3 = new_key("k1"), new_key("k2"), new_key("k3")
    where = f"/sealing-{secrets.token_hex(4)}"

    async with serving(settings, pki, k1) as (running, backends, channel):
        tenant = await create_tenant(
            backends, channel, environment="development", plan="enterprise"
        )
        namespace = (await tenant.namespace()).name
        created = await Hooks(tenant, namespace).create(receiver.url(where), ["task.completed"])
        receiver.endpoint(where, created.secret)
        await delivered(tenant, namespace, receiver, where, 1)

    # rotation 1: k2 is the primary, k1 still opens; the job re-seals under k2
    async with serving(settings, pki, f"{k2},{k1}") as (running, _, channel):
        tenant = replace(tenant, channel=channel)
        assert await running.components.webhooks.reseal_pending() in ((1, 0), (0, 0))
        assert await running.components.webhooks.reseal_pending() == (0, 0)
        await delivered(tenant, namespace, receiver, where, 2)

    # rotation 2: k3 is the primary, k1 is gone; everything k1 sealed was re-sealed already
    async with serving(settings, pki, f"{k3},{k2}") as (running, _, channel):
        tenant = replace(tenant, channel=channel)
        await delivered(tenant, namespace, receiver, where, 3)
        await running.components.webhooks.reseal_pending()
        assert await running.components.webhooks.reseal_pending() == (0, 0)

    # k3 alone opens every secret now
    async with serving(settings, pki, k3) as (running, _, channel):
        tenant = replace(tenant, channel=channel)
        assert await running.components.webhooks.reseal_pending() == (0, 0)
        await delivered(tenant, namespace, receiver, where, 4)


async def test_a_secret_sealed_under_a_dropped_key_is_reported_not_guessed(
    settings: Settings, pki: Pki, receiver: Receiver
) -> None:
    settings = replace(settings, mongodb_database=f"meshgate_sealing_{secrets.token_hex(4)}")
    k1, k2 = new_key("k1"), new_key("k2")
    async with serving(settings, pki, k1) as (running, backends, channel):
        tenant = await create_tenant(
            backends, channel, environment="development", plan="enterprise"
        )
        namespace = (await tenant.namespace()).name
        await Hooks(tenant, namespace).create(receiver.url("/dropped"), ["task.completed"])
    # k1 dropped before the re-seal ran: the job counts the webhook it cannot open
    async with serving(settings, pki, k2) as (running, _, _):
        assert await running.components.webhooks.reseal_pending() == (0, 1)
