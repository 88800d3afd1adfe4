"""A server that answers sidecars: the test routes, the proxy's identity on the allow-list,
and a `tiny` plan (few credits, a small admin-class limit) for the limit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from server.app import RunningServer, create_server
from server.backends import Backends
from server.policies import build_policy_table
from server.registry import descriptors
from server.settings import Settings, load_routes
from storage.core.plans import parse_plans
from tests.support.clients import client_credentials
from tests.support.pki import PROXY_ID, Pki
from tests.support.tenants import MakeTenant, Tenant, create_tenant

# meshgate methods mirrored as routes with the policy their protos declare: Check must
# decide them as the direct call does (test_check.py's equivalence table)
MIRRORED = (
    "/meshgate.v1.DocumentService/ListDocuments",
    "/meshgate.v1.DocumentService/DeleteDocument",
    "/meshgate.v1.OrganizationService/GetOrganization",
    "/meshgate.v1.KeyService/CreateKey",
)
TINY_PLAN = {
    "monthly_credits": 20,
    "limits": {
        "metadata": {"per_second": 100, "burst": 100},
        "data": {"per_second": 100, "burst": 100},
        "search": {"per_second": 100, "burst": 100},
        "admin": {"per_second": 0.01, "burst": 3},
    },
}
ROUTES: list[dict[str, Any]] = [
    {"grpc": "/shop.v1.CartService/GetCart", "permission": "read", "namespaced": True,
     "rate_class": "data"},
    {"grpc": "/shop.v1.CartService/*", "permission": "write", "namespaced": True, "audit": True},
    {"grpc": "/shop.v1.CheckoutService/Pay", "permission": "read", "cost": 7},
    {"grpc": "/shop.v1.AdminService/*", "permission": "read", "rate_class": "admin"},
    {"grpc": "/shop.v1.StatusService/Ping", "access": "public"},
    {"http_prefix": "/api/orders", "methods": ["GET", "HEAD"], "permission": "read",
     "namespaced": True},
]  # fmt: skip


def mirrored_routes() -> list[dict[str, Any]]:
    table = build_policy_table(descriptors())
    routes = []
    for method in MIRRORED:
        policy = table[method]
        routes.append(
            {
                "grpc": method,
                "permission": policy.permission,
                "namespaced": policy.namespaced,
                "cost": policy.cost,
                "rate_class": policy.rate_class,
                "audit": policy.audit,
            }
        )
    return routes


def write_route_file(directory: Path) -> Path:
    path = directory / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": [*ROUTES, *mirrored_routes()]}))
    return path


@pytest.fixture(scope="session")
async def sidecar_server(
    settings: Settings, backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    own = replace(
        settings,
        ext_authz_peers=frozenset({PROXY_ID}),
        routes=load_routes(write_route_file(tmp_path_factory.mktemp("routes"))),
        plans={**settings.plans, **parse_plans({"tiny": TINY_PLAN})},
        metrics_listen=None,
        # no background work: it shares the session's database for the rest of the session,
        # and a task or delivery it claimed would be done (and counted) here, not by the
        # session server whose counts the other tests read
        task_workers=0,
        webhook_workers=0,
    )
    running = await create_server(own, backends)
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="session")
async def sidecar_channel(
    sidecar_server: RunningServer, pki: Pki
) -> AsyncIterator[grpc.aio.Channel]:
    """The Envoy sidecar's connection: its own certificate (PROXY_ID, on the allow-list)."""
    target = f"localhost:{sidecar_server.port}"
    async with grpc.aio.secure_channel(target, client_credentials(pki, "proxy")) as ch:
        yield ch


@pytest.fixture(scope="session")
async def direct_channel(
    sidecar_server: RunningServer, pki: Pki
) -> AsyncIterator[grpc.aio.Channel]:
    """A client's own connection to the same server (the client certificate)."""
    target = f"localhost:{sidecar_server.port}"
    async with grpc.aio.secure_channel(target, client_credentials(pki)) as ch:
        yield ch


@pytest.fixture
def make_sidecar_tenant(backends: Backends, direct_channel: grpc.aio.Channel) -> MakeTenant:
    """Organizations whose helpers call the sidecar server directly."""

    async def make(environment: str = "development", plan: str = "enterprise") -> Tenant:
        return await create_tenant(backends, direct_channel, environment=environment, plan=plan)

    return make
