"""Rules in dry run, from the outside: a plan's limit of a class, a key's own limit, the
rate-limit service's descriptors, and a route of the route policy file. A call the rule in
dry run would refuse succeeds and is counted, written in its access line and audited; the
same rule enforced refuses it. The counter's series stay few, whoever calls.

The session's sidecar server has a `dry` plan (its admin class holds the `strict` plan's
limit of 2 calls in dry run), that `strict` plan, and `/shop.v1.AdminService/Purge` for
ADMIN in dry run beside `/shop.v1.AdminService/*` for READ (conftest.py). Rolling a
route or a method policy out, then enforcing it through a reload of its file, is in
tests/server/test_policy_reload.py."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from meshgate.v1 import audit_service_pb2, audit_service_pb2_grpc, key_service_pb2, options_pb2

from server.app import RunningServer
from server.logs import GuardedJsonFormatter
from tests.support.clients import auth, rpc_error
from tests.support.envoy import Check, RateLimit, check_request, descriptor, rate_limit_request
from tests.support.scrape import sample, scrape, series
from tests.support.tenants import ENV_PROTO, MakeTenant, Tenant
from tests.support.waiting import eventually

LIST_KEYS = "meshgate.v1.KeyService/ListKeys"
SHOULD_RATE_LIMIT = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
DENIALS = "meshgate_dry_run_denials_total"


async def list_keys(tenant: Tenant, secret: str) -> None:
    await tenant.keys.ListKeys(key_service_pb2.ListKeysRequest(), metadata=auth(secret))


async def denials(running: RunningServer, method: str, rule: str) -> float:
    text = await scrape(running.metrics_port)
    return sample(text, DENIALS, rpc_method=method, rule=rule, reason="RATE_LIMITED")


async def audited_dry_runs(tenant: Tenant, actor_key_id: str) -> list[str]:
    """The methods of the tenant's DRY_RUN_RATE_LIMITED events by `actor_key_id`."""
    stub = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    page = await stub.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(
            outcome="DRY_RUN_RATE_LIMITED", actor_key_id=actor_key_id
        ),
        metadata=auth(tenant.admin),
    )
    return [event.method for event in page.events]


def access_lines(caplog: pytest.LogCaptureFixture, key_id: str) -> list[dict[str, object]]:
    formatter = GuardedJsonFormatter()
    return [
        json.loads(formatter.format(r))
        for r in caplog.records
        if r.name == "meshgate.access" and getattr(r, "key_id", None) == key_id
    ]


async def test_a_plan_limit_in_dry_run_counts_what_the_same_limit_enforced_refuses(
    sidecar_server: RunningServer, make_sidecar_tenant: MakeTenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.access")
    before = await denials(sidecar_server, LIST_KEYS, "plan")
    rolling_out = await make_sidecar_tenant(plan="dry")
    for _ in range(3):  # the third is over the dry-run limit of 2: it still succeeds
        await list_keys(rolling_out, rolling_out.admin)
    assert await denials(sidecar_server, LIST_KEYS, "plan") == before + 1
    lines = access_lines(caplog, rolling_out.admin_key_id)
    assert [line["status"] for line in lines] == ["OK", "OK", "OK"]
    assert [line.get("dry_run") for line in lines] == [
        None,
        None,
        [{"rule": "plan", "reason": "RATE_LIMITED", "name": "dry"}],
    ]

    async def audited() -> bool:
        return await audited_dry_runs(rolling_out, rolling_out.admin_key_id) == [
            "/meshgate.v1.KeyService/ListKeys"
        ]

    await eventually(audited)
    # the same limit, enforced: the third call is refused
    enforced = await make_sidecar_tenant(plan="strict")
    for _ in range(2):
        await list_keys(enforced, enforced.admin)
    error = await rpc_error(list_keys(enforced, enforced.admin))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit exceeded for admin calls" in (error.details() or "")


async def test_a_keys_own_limit_in_dry_run_counts_until_it_is_made_enforcing(
    sidecar_server: RunningServer, make_sidecar_tenant: MakeTenant
) -> None:
    tenant = await make_sidecar_tenant()  # enterprise: the plan never refuses here
    limit = key_service_pb2.RateLimit(per_second=0.01, burst=2, dry_run=True)
    created = await tenant.keys.CreateKey(
        key_service_pb2.CreateKeyRequest(
            name="rolled out",
            environment=ENV_PROTO[tenant.environment],
            permissions=[options_pb2.PERMISSION_ADMIN],
            rate_limit=limit,
        ),
        metadata=auth(tenant.admin),
    )
    assert created.key.rate_limit.dry_run
    before = await denials(sidecar_server, LIST_KEYS, "key")
    for _ in range(4):
        await list_keys(tenant, created.secret)
    assert await denials(sidecar_server, LIST_KEYS, "key") == before + 2

    async def audited_once() -> bool:  # one event per key, method and reason a minute
        return len(await audited_dry_runs(tenant, created.key.key_id)) == 1

    await eventually(audited_once)
    # made enforcing: the key's own bucket refuses the third call
    limit.dry_run = False
    changed = await tenant.keys.SetKeyRateLimit(
        key_service_pb2.SetKeyRateLimitRequest(key_id=created.key.key_id, rate_limit=limit),
        metadata=auth(tenant.admin),
    )
    assert not changed.key.rate_limit.dry_run
    await list_keys(tenant, created.secret)
    await list_keys(tenant, created.secret)
    error = await rpc_error(list_keys(tenant, created.secret))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await denials(sidecar_server, LIST_KEYS, "key") == before + 2


async def test_descriptors_in_dry_run_are_ok_and_counted_like_envoys_shadow_mode(
    sidecar_server: RunningServer,
    sidecar_channel: grpc.aio.Channel,
    make_sidecar_tenant: MakeTenant,
) -> None:
    rolling_out = await make_sidecar_tenant(plan="dry")
    before = await denials(sidecar_server, SHOULD_RATE_LIMIT, "plan")
    answer = await RateLimit(sidecar_channel)(
        rate_limit_request(
            descriptor(("organization_id", rolling_out.organization_id), ("rate_class", "admin")),
            hits_addend=3,
        )
    )
    assert answer.overall_code == answer.OK
    assert [s.code for s in answer.statuses] == [answer.OK]
    assert await denials(sidecar_server, SHOULD_RATE_LIMIT, "plan") == before + 1
    # the same limit enforced: OVER_LIMIT
    enforced = await make_sidecar_tenant(plan="strict")
    answer = await RateLimit(sidecar_channel)(
        rate_limit_request(
            descriptor(("organization_id", enforced.organization_id), ("rate_class", "admin")),
            hits_addend=3,
        )
    )
    assert answer.overall_code == answer.OVER_LIMIT


async def test_dry_run_denials_of_many_keys_and_organizations_make_one_series(
    sidecar_server: RunningServer,
    sidecar_channel: grpc.aio.Channel,
    make_sidecar_tenant: MakeTenant,
) -> None:
    """The counter's labels are the route's name (bounded by the file), the kind of rule and
    the reason: never a key, an organization, a namespace or a path."""
    labels = {
        "rpc_method": "shop.v1.AdminService/*",
        "rule": "route",
        "reason": "PERMISSION_DENIED_LEVEL",
    }
    before_text = await scrape(sidecar_server.metrics_port)
    before = sample(before_text, DENIALS, **labels)
    secrets: list[tuple[Tenant, str]] = []
    for _ in range(3):
        tenant = await make_sidecar_tenant()
        for _ in range(2):
            secrets.append((tenant, (await tenant.key(options_pb2.PERMISSION_READ)).secret))
    for _, secret in secrets:
        purge = check_request("/shop.v1.AdminService/Purge", {"authorization": f"Bearer {secret}"})
        assert (await Check(sidecar_channel)(purge)).HasField("ok_response")
    text = await scrape(sidecar_server.metrics_port)
    assert sample(text, DENIALS, **labels) == before + len(secrets)
    new = {s for s in series(text) - series(before_text) if s.startswith(DENIALS)}
    assert new <= {
        f'{DENIALS}{{reason="PERMISSION_DENIED_LEVEL",rpc_method="shop.v1.AdminService/*",rule="route"}}'
    }
    for tenant, _ in secrets:
        assert tenant.organization_id not in text
