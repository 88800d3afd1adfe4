"""A server that answers sidecars: the test routes, the proxy's identity on the allow-list
(bound to any organization and principal), a `tiny` plan (few credits, a small admin-class
limit) and a `slow` one (a data class refilled once in 100 s) for the limit tests, a
`dry` plan (the admin class's `strict` limit in dry run) and that `strict` plan, a small
cap on the rate-limit buckets kept per process, and its metrics on a port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from meshgate.v1 import options_pb2

from interceptors.sidecar.bindings import SidecarBindings, parse_bindings
from server.app import RunningServer, create_server
from server.backends import Backends
from server.policies import build_policy_table
from server.registry import descriptors
from server.settings import Settings, load_routes
from storage.core.plans import parse_plans
from tests.support.clients import client_credentials
from tests.support.envoy import CLIENT_PRINCIPAL
from tests.support.pki import PROXY_ID, SHOP_SIDECAR_ID, Pki
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
# one token per Redis grant (a lease of 1) and no refill to speak of: exact remaining counts
SLOW_PLAN = {
    "monthly_credits": 1000,
    "limits": {
        "metadata": {"per_second": 100, "burst": 100},
        "data": {"per_second": 0.01, "burst": 20},
        "search": {"per_second": 100, "burst": 100},
        "admin": {"per_second": 100, "burst": 100},
    },
}
# a limit of 2 calls (refilled once in 100 s) on the admin class: in dry run, and enforced
STRICT_ADMIN = {"per_second": 0.01, "burst": 2}


def _with_admin(admin: dict[str, Any]) -> dict[str, Any]:
    roomy = {"per_second": 100, "burst": 100}
    return {
        "monthly_credits": 1000,
        "limits": {"metadata": roomy, "data": roomy, "search": roomy, "admin": admin},
    }


STRICT_PLAN = _with_admin(STRICT_ADMIN)
DRY_PLAN = _with_admin({"per_second": 100, "burst": 100, "dry_run": STRICT_ADMIN})

# rate-limit buckets the server keeps state for (MESHGATE_RATE_LIMIT_MAX_BUCKETS), small
MAX_BUCKETS = 300
ROUTES: list[dict[str, Any]] = [
    {"grpc": "/shop.v1.CartService/GetCart", "permission": "read", "namespaced": True,
     "rate_class": "data"},
    {"grpc": "/shop.v1.CartService/*", "permission": "write", "namespaced": True, "audit": True},
    {"grpc": "/shop.v1.CheckoutService/Pay", "permission": "read", "cost": 7},
    {"grpc": "/shop.v1.AdminService/*", "permission": "read", "rate_class": "admin"},
    {"grpc": "/shop.v1.AdminService/Purge", "permission": "admin", "dry_run": True},
    {"grpc": "/shop.v1.StatusService/Ping", "access": "public"},
    {"http_prefix": "/api/orders", "methods": ["GET", "HEAD"], "permission": "read",
     "namespaced": True},
]  # fmt: skip


# the reproduction of escaped prefixes (issue 21, item 7): a read prefix, a read
# prefix above an admin one
ESCAPE_ROUTES: list[dict[str, Any]] = [
    {"http_prefix": "/api/read/", "methods": ["GET"], "permission": "read"},
    {"http_prefix": "/api", "methods": ["GET"], "permission": "read"},
    {"http_prefix": "/api/admin", "permission": "admin"},
    {"grpc": "/shop.v1.CartService/GetCart", "permission": "read", "rate_class": "data"},
    {"grpc": "/shop.v1.StatusService/Ping", "access": "public"},
]
# the mesh workloads the shop's sidecar hears from (its source principals)
SHOP_CALLERS = (CLIENT_PRINCIPAL, "spiffe://cluster.local/ns/*/sa/*")


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
        ext_authz_bindings=SidecarBindings.any_for(frozenset({PROXY_ID})),
        routes=load_routes(write_route_file(tmp_path_factory.mktemp("routes"))),
        plans={
            **settings.plans,
            **parse_plans(
                {"tiny": TINY_PLAN, "slow": SLOW_PLAN, "dry": DRY_PLAN, "strict": STRICT_PLAN}
            ),
        },
        rate_limit_max_buckets=MAX_BUCKETS,
        # the limit tests count tokens: a Redis answer slower than the 0.2 s default on a
        # loaded machine would switch the limiter to its local fallback mid-count
        limiter_timeout_s=1.0,
        metrics_listen="127.0.0.1:0",
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


@dataclass(frozen=True)
class BoundServer:
    """A second server on the same stores: the issue's escape routes, and two sidecars on the
    allow-list: the proxy (any organization) and the shop's (`organization` only, and the
    principals of SHOP_CALLERS)."""

    running: RunningServer
    organization: Tenant
    # a READ key of the organization
    reader: str
    proxy: grpc.aio.Channel
    shop: grpc.aio.Channel


@pytest.fixture(scope="session")
async def bound_server(
    settings: Settings,
    backends: Backends,
    pki: Pki,
    direct_channel: grpc.aio.Channel,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[BoundServer]:
    organization = await create_tenant(
        backends, direct_channel, environment="development", plan="enterprise"
    )
    reader = await organization.key(options_pb2.PERMISSION_READ)
    bindings = parse_bindings({"sidecars": [
        {"identity": PROXY_ID, "organizations": "*", "principals": "*"},
        {"identity": SHOP_SIDECAR_ID, "organizations": [organization.organization_id],
         "principals": list(SHOP_CALLERS)},
    ]})  # fmt: skip
    routes = tmp_path_factory.mktemp("bound-routes") / "routes.yaml"
    routes.write_text(yaml.safe_dump({"routes": ESCAPE_ROUTES}))
    own = replace(
        settings,
        ext_authz_peers=bindings.identities,
        ext_authz_bindings=bindings,
        routes=load_routes(routes),
        plans={**settings.plans, **parse_plans({"tiny": TINY_PLAN})},
        metrics_listen=None,
    )
    running = await create_server(own, backends)
    target = f"localhost:{running.port}"
    try:
        async with (
            grpc.aio.secure_channel(target, client_credentials(pki, "proxy")) as proxy,
            grpc.aio.secure_channel(target, client_credentials(pki, "shop-sidecar")) as shop,
        ):
            yield BoundServer(running, organization, reader.secret, proxy, shop)
    finally:
        await running.stop(1.0)
