"""ext_authz `Check` from the attacker's side: what a client behind Envoy can make meshgate
keep (metric series), judge (paths that escape a prefix) or pass on (meshgate's headers in
another spelling). Every request goes through the live server, as Envoy sends it."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from typing import Any

import grpc
import pytest

from interceptors.access_log import AccessRecord
from interceptors.sidecar.check import NO_ROUTE
from server.app import RunningServer
from server.logs import GuardedJsonFormatter
from tests.interceptors.sidecar.conftest import BoundServer
from tests.support.envoy import Check, check_request, ok_headers
from tests.support.scrape import scrape, series
from tests.support.tenants import MakeTenant

# every label name the server exports: each takes its values from a fixed set
# (docs/operations.md#metrics); a new one must be added here with its set
LABEL_NAMES = frozenset({
    "rpc_system_name", "rpc_method", "rpc_status_code", "error_type", "code", "part", "plan",
    "rate_class", "dependency", "store", "service", "outcome", "kind", "state", "reason",
    "threshold", "le", "rule", "file", "cache", "version", "revision",
})  # fmt: skip
# gauges of the database every test of the session writes to, not of this server's calls
SHARED_GAUGES = ("meshgate_work_queue_depth",)
_LABEL = re.compile(r'([a-z_]+)="')

# what a scanner sends: paths no route names, unknown keys on routes that exist, any
# source principal; each shape is sent once first, then RANDOM_CALLS more at random
RANDOM_CALLS = 500


def _random_check(index: int) -> Any:
    token = secrets.token_hex(8)
    principal = f"spiffe://scanner.example/{token}"
    unknown_key = {"authorization": f"Bearer mg_development_{secrets.token_urlsafe(32)}"}
    shape = index % 4
    if shape == 0:  # a path nobody routes, a malformed key
        return check_request(f"/wp-admin/{token}.php", {"authorization": f"Bearer {token}"},
                             method="GET", grpc_call=False, principal=principal)  # fmt: skip
    if shape == 1:  # an id in a routed prefix, an unknown key
        return check_request(f"/api/orders/{token}", unknown_key, method="GET",
                             grpc_call=False, principal=principal)  # fmt: skip
    if shape == 2:  # a made-up method of a service routed with `*`, no key
        return check_request(f"/shop.v1.CartService/M{token}", principal=principal)
    # an escape attempt, refused before any step
    return check_request(f"/api/orders;{token}/%2e%2e", unknown_key, method="GET",
                         grpc_call=False, principal=principal)  # fmt: skip


async def _in_waves(check: Check, indexes: range, width: int = 50) -> list[Any]:
    """The answers to `_random_check(i)` for each index, `width` at a time."""
    answers: list[Any] = []
    for start in range(0, len(indexes), width):
        wave = indexes[start : start + width]
        answers += await asyncio.gather(*(check(_random_check(i)) for i in wave))
    return answers


async def test_random_paths_keys_and_principals_add_no_metric_series(
    sidecar_server: RunningServer,
    sidecar_channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 21, item 1: a refused Check was labelled with its raw path (3,000 paths made
    3,001 series). Now the method label is the route's name or NO_ROUTE; the path is only
    in the access line."""
    check = Check(sidecar_channel)
    warm = await _in_waves(check, range(4))
    assert all(not a.HasField("ok_response") for a in warm)
    port = sidecar_server.metrics_port
    before = series(await scrape(port))
    caplog.set_level(logging.INFO, logger="meshgate.access")
    answers = await _in_waves(check, range(RANDOM_CALLS))
    assert {a.denied_response.status.code for a in answers} == {401, 403}
    text = await scrape(port)
    # the work queue's depth is read from the database the whole session shares: other
    # tests' work may add its (kind, state) series (a fixed set) at any time
    moved = {s for s in series(text) ^ before if not s.startswith(SHARED_GAUGES)}
    assert not moved, sorted(moved)[:5]
    # the routes appear under their names, the rest under NO_ROUTE; never a path or an id
    durations = [s for s in before if s.startswith("rpc_server_call_duration_seconds_count")]
    for name in ('"GET,HEAD /api/orders"', '"shop.v1.CartService/*"', f'"{NO_ROUTE}"'):
        assert any(f"rpc_method={name}" in s for s in durations), name
    refusals = [s for s in series(text) if s.startswith("meshgate_auth_failures_total{")]
    assert refusals
    for line in refusals:  # labelled by method and code only: no peer, no key
        assert "peer=" not in line and "key_id=" not in line, line
    assert {name for line in series(text) for name in _LABEL.findall(line)} <= LABEL_NAMES
    # the path goes to the access line, beside the bounded method
    records = [r for r in caplog.records if isinstance(r, AccessRecord)]
    assert any(r.method == NO_ROUTE and (r.path or "").startswith("/wp-admin/") for r in records)
    assert any(r.method == "GET,HEAD /api/orders" for r in records)


async def test_a_plan_no_longer_offered_is_counted_under_the_plan_it_gets(
    sidecar_server: RunningServer,
    sidecar_channel: grpc.aio.Channel,
    make_sidecar_tenant: MakeTenant,
) -> None:
    """An organization's stored plan name is not a label: its calls follow the default plan
    (the plan table's), and are counted under that plan's name."""
    retired = f"retired-{secrets.token_hex(4)}"
    tenant = await make_sidecar_tenant(plan=retired)
    pay = check_request("/shop.v1.CheckoutService/Pay", {"authorization": f"Bearer {tenant.admin}"})
    assert (await Check(sidecar_channel)(pay)).HasField("ok_response")
    text = await scrape(sidecar_server.metrics_port)
    assert retired not in text
    applied = sidecar_server.components.plan_of(retired).name
    assert f'meshgate_credits_debited_total{{plan="{applied}"}}' in text


def test_the_access_line_writes_the_path_redacted_and_bounded() -> None:
    """The path is caller-chosen: redacted like the request id and peer, at most 1 KiB."""
    from calls.policy import Access, Policy
    from calls.state import CallState

    key_shaped = "mg_prod_" + "A" * 40
    call = CallState(method=NO_ROUTE, policy=Policy(access=Access.PUBLIC), request_id="r1",
                     metadata={}, peer_address="10.0.0.7:40000",
                     path=f"/x/{key_shaped}/" + "y" * 5000)  # fmt: skip
    line = json.loads(GuardedJsonFormatter().format(AccessRecord("meshgate.access", 0.0, call, 0)))
    assert line["method"] == NO_ROUTE
    assert line["path"].startswith("/x/[redacted]/yyy")
    assert key_shaped not in line["path"]
    assert len(line["path"]) < 1100


@pytest.mark.parametrize(
    "path",
    [
        "/api/read/..;/admin",
        "/api/admin;x=1/users",
        "/api/ADMIN/users",
        "/api/admin%3B/users",
        "/api/%61dmin/users",
    ],
)
async def test_a_prefix_cannot_be_escaped_with_parameters_case_or_escapes(
    bound_server: BoundServer, path: str
) -> None:
    """Issue 21, item 7, with its routes (`/api/read/` and `/api` for GET, read; `/api/admin`,
    admin): each path matched a read route, although upstreams serve `/admin` (parameters
    stripped before dot segments) or `/api/admin/users` (case ignored, escapes decoded). Now
    they match nothing and are refused as a route without policy."""
    headers = {"authorization": f"Bearer {bound_server.reader}"}
    check = Check(bound_server.proxy)
    refused = await check(check_request(path, headers, method="GET", grpc_call=False))
    assert refused.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert refused.status.message.startswith("this route has no policy")
    assert refused.denied_response.status.code == 403
    # the routes themselves still answer
    for allowed in ("/api/read/x", "/api/users"):
        answer = await check(check_request(allowed, headers, method="GET", grpc_call=False))
        assert answer.HasField("ok_response"), allowed
    admin = await check(check_request("/api/admin/users", headers, method="GET", grpc_call=False))
    assert admin.status.message == "this method needs the ADMIN permission"


async def test_meshgate_headers_in_any_spelling_never_reach_the_upstream(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """Issue 21, item 8: WSGI/CGI upstreams read `x_meshgate_organization_id` (and every mix
    of `-` and `_`) as the header meshgate sets; only the exact names meshgate sets pass."""
    tenant = await make_sidecar_tenant()
    victim = await make_sidecar_tenant()
    forged = {
        "authorization": f"Bearer {tenant.admin}",
        "x_meshgate_organization_id": victim.organization_id,
        "x-meshgate_key-id": victim.admin_key_id,
        "X_MESHGATE-namespace_id": "ns_forged",
        "x-meshgate-organization-id": victim.organization_id,
        "x-meshgatekeeper": "not ours",
    }
    for raw in (False, True):
        response = await Check(sidecar_channel)(
            check_request("/shop.v1.CheckoutService/Pay", forged, raw_headers=raw)
        )
        assert response.HasField("ok_response")
        assert ok_headers(response)["x-meshgate-organization-id"] == tenant.organization_id
        assert set(response.ok_response.headers_to_remove) == {
            "x_meshgate_organization_id",
            "x-meshgate_key-id",
            "x_meshgate-namespace_id",
            "authorization",
        }
