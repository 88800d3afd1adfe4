"""The policy files reloaded by a running server, mounted as Kubernetes mounts a ConfigMap
(each file a symlink through `..data`, swapped at once to a new directory): a route and a
method policy rolled out in dry run, then enforced; an invalid file refused while the old
policy keeps deciding; the sidecar bindings changed. Everything is observed from outside:
Check and the API's answers, /metrics, the access and server log lines, the audit trail."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from meshgate.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    options_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
)

from interceptors.sidecar.bindings import parse_bindings
from server.app import RunningServer, create_server
from server.backends import Backends
from server.logs import GuardedJsonFormatter
from server.method_policies import MethodPolicies
from server.policy_files import digest_of
from server.settings import Settings, load_routes
from tests.support.clients import auth, client_credentials, rpc_error
from tests.support.envoy import Check, check_request
from tests.support.pki import PROXY_ID, SHOP_SIDECAR_ID, Pki
from tests.support.scrape import sample, scrape
from tests.support.tenants import Tenant, create_tenant
from tests.support.waiting import eventually

EXPORT = "/shop.v1.ReportService/Export"
GET_ORGANIZATION = "/meshgate.v1.OrganizationService/GetOrganization"
DENIALS = "meshgate_dry_run_denials_total"


class ConfigMapVolume:
    """A directory as the kubelet mounts a ConfigMap: `<name>` -> `..data/<name>`, and
    `..data` -> a timestamped directory, replaced at once (rename) on every update."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._versions = itertools.count(1)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, content: str) -> bytes:
        """Swap in a new version holding `content` as `name` (the other files carried over)."""
        version = self.root / f"..2026_01_01_00_00_{next(self._versions):02d}"
        version.mkdir()
        data = self.root / "..data"
        if data.exists():
            for old in data.iterdir():
                (version / old.name).write_bytes(old.read_bytes())
        (version / name).write_text(content)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, data)
        if not self.path(name).is_symlink():
            self.path(name).symlink_to(f"..data/{name}")
        return content.encode()


@dataclass
class Reloading:
    running: RunningServer
    volume: ConfigMapVolume
    tenant: Tenant
    reader: str
    reader_key_id: str
    proxy: grpc.aio.Channel
    shop: grpc.aio.Channel

    async def put(self, name: str, document: dict[str, Any], *, label: str) -> str:
        """Write a valid file and wait until the server put it in force; its digest."""
        digest = digest_of(self.volume.write(name, yaml.safe_dump(document)))
        watched = self.running.policy_files
        assert watched is not None

        async def in_force() -> bool:
            return watched[label].digest == digest

        await eventually(in_force)
        return digest


def routes(*, export_dry_run: bool, export_permission: str = "admin") -> dict[str, Any]:
    return {
        "routes": [
            {"grpc": "/shop.v1.ReportService/*", "permission": "read"},
            {"grpc": EXPORT, "permission": export_permission, "dry_run": export_dry_run},
        ]
    }


def methods(*, dry_run: bool) -> dict[str, Any]:
    return {"methods": [{"method": GET_ORGANIZATION, "permission": "admin", "dry_run": dry_run}]}


def bindings(shop_organization: str) -> dict[str, Any]:
    shop = {"identity": SHOP_SIDECAR_ID, "organizations": [shop_organization], "principals": "*"}
    return {"sidecars": [{"identity": PROXY_ID, "organizations": "*", "principals": "*"}, shop]}


@pytest.fixture(scope="module")
async def reloading(
    settings: Settings,
    backends: Backends,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Reloading]:
    volume = ConfigMapVolume(tmp_path_factory.mktemp("configmap"))
    volume.write("routes.yaml", yaml.safe_dump(routes(export_dry_run=True)))
    volume.write("methods.yaml", yaml.safe_dump({"methods": []}))
    # the shop's sidecar is bound to an organization that is not the tenant's (yet)
    volume.write("bindings.yaml", yaml.safe_dump(bindings("org_00000000000000000000")))
    own = replace(
        settings,
        ext_authz_peers=frozenset({PROXY_ID, SHOP_SIDECAR_ID}),
        ext_authz_bindings=parse_bindings(bindings("org_00000000000000000000")),
        routes=load_routes(volume.path("routes.yaml")),
        method_policies=MethodPolicies(),
        route_policy_file=volume.path("routes.yaml"),
        ext_authz_bindings_file=volume.path("bindings.yaml"),
        method_policy_file=volume.path("methods.yaml"),
        metrics_listen="127.0.0.1:0",
    )
    running = await create_server(own, backends)
    assert running.policy_files is not None
    running.policy_files.check_interval_s = 0.1  # the default is 1 s
    target = f"localhost:{running.port}"
    try:
        async with (
            grpc.aio.secure_channel(target, client_credentials(pki)) as direct,
            grpc.aio.secure_channel(target, client_credentials(pki, "proxy")) as proxy,
            grpc.aio.secure_channel(target, client_credentials(pki, "shop-sidecar")) as shop,
        ):
            tenant = await create_tenant(
                backends, direct, environment="development", plan="enterprise"
            )
            reader = await tenant.key(options_pb2.PERMISSION_READ)
            yield Reloading(running, volume, tenant, reader.secret, reader.key.key_id, proxy, shop)
    finally:
        await running.stop(1.0)


async def check_export(channel: grpc.aio.Channel, secret: str) -> int:
    response = await Check(channel)(check_request(EXPORT, {"authorization": f"Bearer {secret}"}))
    return int(response.status.code)


async def dry_run_outcomes(tenant: Tenant, key_id: str) -> list[tuple[str, str]]:
    stub = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    page = await stub.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(actor_key_id=key_id), metadata=auth(tenant.admin)
    )
    return [(e.method, e.outcome) for e in page.events if e.outcome.startswith("DRY_RUN_")]


def access_line(caplog: pytest.LogCaptureFixture, method: str) -> dict[str, Any]:
    (record,) = [
        r
        for r in caplog.records
        if r.name == "meshgate.access" and getattr(r, "method", None) == method
    ]
    line: dict[str, Any] = json.loads(GuardedJsonFormatter().format(record))
    return line


async def test_a_route_rolled_out_in_dry_run_then_enforced_by_reloading_the_file(
    reloading: Reloading, caplog: pytest.LogCaptureFixture
) -> None:
    r = reloading
    await r.put("routes.yaml", routes(export_dry_run=True), label="route_policy")
    caplog.set_level(logging.INFO)
    labels = {
        "rpc_method": "shop.v1.ReportService/*",
        "rule": "route",
        "reason": "PERMISSION_DENIED_LEVEL",
    }
    before = sample(await scrape(r.running.metrics_port), DENIALS, **labels)
    # in dry run: the READ key's Export goes on (the ReportService/* route in force)...
    assert await check_export(r.proxy, r.reader) == grpc.StatusCode.OK.value[0]
    # ...counted, in its access line, and audited, with the reason the refusal would carry
    text = await scrape(r.running.metrics_port)
    assert sample(text, DENIALS, **labels) == before + 1
    line = access_line(caplog, "/shop.v1.ReportService/*")
    assert line["status"] == "OK" and line["path"] == EXPORT
    assert line["dry_run"] == [
        {"rule": "route", "reason": "PERMISSION_DENIED_LEVEL", "name": EXPORT}
    ]

    async def audited() -> bool:
        outcomes = await dry_run_outcomes(r.tenant, r.reader_key_id)
        return ("/shop.v1.ReportService/*", "DRY_RUN_PERMISSION_DENIED_LEVEL") in outcomes

    await eventually(audited)
    # enforced: the same entry without dry_run, through the mounted file
    caplog.clear()
    digest = await r.put("routes.yaml", routes(export_dry_run=False), label="route_policy")
    response = await Check(r.proxy)(check_request(EXPORT, {"authorization": f"Bearer {r.reader}"}))
    assert response.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert response.denied_response.status.code == 403
    assert response.status.message == "this method needs the ADMIN permission"
    assert await check_export(r.proxy, r.tenant.admin) == grpc.StatusCode.OK.value[0]
    reloaded = [r.getMessage() for r in caplog.records if r.name == "meshgate.policy"]
    assert any(
        m.startswith("MESHGATE_ROUTE_POLICY_FILE reloaded:") and f"({digest}), 2 routes" in m
        for m in reloaded
    ), reloaded


async def test_an_invalid_route_file_is_refused_once_and_the_old_policy_keeps_deciding(
    reloading: Reloading, caplog: pytest.LogCaptureFixture
) -> None:
    r = reloading
    good = await r.put("routes.yaml", routes(export_dry_run=False), label="route_policy")
    caplog.set_level(logging.INFO, logger="meshgate.policy")
    watched = r.running.policy_files
    assert watched is not None
    invalid = routes(export_dry_run=False, export_permission="owner")
    bad = digest_of(r.volume.write("routes.yaml", yaml.safe_dump(invalid)))

    async def refused() -> bool:
        return watched["route_policy"].refused_digest == bad

    await eventually(refused)
    await asyncio.sleep(0.3)  # three more checks of the same bad content: no second ERROR
    # the old policy keeps deciding: READ refused, ADMIN allowed on Export
    assert await check_export(r.proxy, r.reader) == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert await check_export(r.proxy, r.tenant.admin) == grpc.StatusCode.OK.value[0]
    text = await scrape(r.running.metrics_port)
    assert sample(text, "meshgate_policy_file_refused", file="route_policy") == 1
    assert sample(text, "meshgate_policy_reload_failures_total", file="route_policy") >= 1
    errors = [x.getMessage() for x in caplog.records if x.levelno == logging.ERROR]
    assert errors == [
        f"MESHGATE_ROUTE_POLICY_FILE: {r.volume.path('routes.yaml')}: routes[1]: permission"
        f" must be one of read, write, delete, admin; refused ({bad}): the policy in force"
        f" ({good}) stays"
    ]
    # restored: the refusal clears
    await r.put("routes.yaml", routes(export_dry_run=True), label="route_policy")
    text = await scrape(r.running.metrics_port)
    assert sample(text, "meshgate_policy_file_refused", file="route_policy") == 0
    assert len([x for x in caplog.records if x.levelno == logging.ERROR]) == 1


async def test_a_method_policy_rolled_out_in_dry_run_then_enforced(
    reloading: Reloading, caplog: pytest.LogCaptureFixture
) -> None:
    r = reloading
    stub = organization_service_pb2_grpc.OrganizationServiceStub(r.tenant.channel)
    request = organization_service_pb2.GetOrganizationRequest()
    await r.put("methods.yaml", methods(dry_run=True), label="method_policy")
    caplog.set_level(logging.INFO, logger="meshgate.access")
    labels = {
        "rpc_method": GET_ORGANIZATION[1:],
        "rule": "method",
        "reason": "PERMISSION_DENIED_LEVEL",
    }
    before = sample(await scrape(r.running.metrics_port), DENIALS, **labels)
    await stub.GetOrganization(request, metadata=auth(r.reader))  # the READ key goes on
    assert sample(await scrape(r.running.metrics_port), DENIALS, **labels) == before + 1
    line = access_line(caplog, GET_ORGANIZATION)
    assert line["dry_run"] == [
        {"rule": "method", "reason": "PERMISSION_DENIED_LEVEL", "name": GET_ORGANIZATION}
    ]

    async def audited() -> bool:
        outcomes = await dry_run_outcomes(r.tenant, r.reader_key_id)
        return (GET_ORGANIZATION, "DRY_RUN_PERMISSION_DENIED_LEVEL") in outcomes

    await eventually(audited)
    await r.put("methods.yaml", methods(dry_run=False), label="method_policy")
    error = await rpc_error(stub.GetOrganization(request, metadata=auth(r.reader)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "this method needs the ADMIN permission"
    await stub.GetOrganization(request, metadata=auth(r.tenant.admin))
    await r.put("methods.yaml", {"methods": []}, label="method_policy")
    await stub.GetOrganization(request, metadata=auth(r.reader))


async def test_the_sidecar_bindings_are_reloaded_and_must_still_match_the_allow_list(
    reloading: Reloading, caplog: pytest.LogCaptureFixture
) -> None:
    r = reloading
    await r.put("routes.yaml", routes(export_dry_run=True), label="route_policy")
    # bound to another organization: the shop's sidecar may not speak for the tenant's key
    assert await check_export(r.shop, r.reader) == grpc.StatusCode.PERMISSION_DENIED.value[0]
    await r.put("bindings.yaml", bindings(r.tenant.organization_id), label="ext_authz_bindings")
    assert await check_export(r.shop, r.reader) == grpc.StatusCode.OK.value[0]
    # a binding of a sidecar that is not on MESHGATE_EXT_AUTHZ_PEERS is refused, as at start-up
    caplog.set_level(logging.ERROR, logger="meshgate.policy")
    stranger = bindings(r.tenant.organization_id)
    stranger["sidecars"].append(
        {"identity": "spiffe://x/stranger", "organizations": "*", "principals": "*"}
    )
    bad = digest_of(r.volume.write("bindings.yaml", yaml.safe_dump(stranger)))
    watched = r.running.policy_files
    assert watched is not None

    async def refused() -> bool:
        return watched["ext_authz_bindings"].refused_digest == bad

    await eventually(refused)
    assert "spiffe://x/stranger is bound but not on MESHGATE_EXT_AUTHZ_PEERS" in caplog.text
    assert await check_export(r.shop, r.reader) == grpc.StatusCode.OK.value[0]
