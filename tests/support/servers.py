"""An in-process meshgate server on its own backends, for tests that need settings of
their own (the session server shares one set), or a database of their own (`BulkServer`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.settings import Settings
from tests.support.clients import client_credentials
from tests.support.pki import Pki
from tests.support.tenants import Tenant, create_tenant

__all__ = ["BulkServer", "serving"]


@asynccontextmanager
async def serving(
    settings: Settings, pki: Pki
) -> AsyncIterator[tuple[RunningServer, Backends, grpc.aio.Channel]]:
    """A started server with `settings`, its backends and an mTLS channel to it; stopped
    and closed on exit."""
    backends = await open_backends(settings)
    running = await create_server(settings, backends)
    try:
        target = f"localhost:{running.port}"
        async with grpc.aio.secure_channel(target, client_credentials(pki)) as channel:
            yield running, backends, channel
    finally:
        await running.stop(1.0)
        await backends.close()


@dataclass(frozen=True)
class BulkServer:
    """A server on a database of its own, for tests that store thousands of items (the
    `bulk_server` fixture, tests/conftest.py)."""

    running: RunningServer
    backends: Backends
    channel: grpc.aio.Channel

    async def tenant(self) -> Tenant:
        return await create_tenant(
            self.backends, self.channel, environment="development", plan="enterprise"
        )
