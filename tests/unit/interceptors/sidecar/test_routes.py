"""The route policy file: what it accepts, what it refuses (naming the route and the field),
and which route a request falls under. That a bad file stops `meshgate serve`:
tests/unit/server/test_cli.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from calls.policy import Access, Policy
from interceptors.sidecar.routes import RouteError, parse_routes
from server.settings import Settings, SettingsError, load_routes

ROOT = Path(__file__).resolve().parents[4]

ROUTES: dict[str, Any] = {
    "routes": [
        {"grpc": "/shop.v1.Cart/Get", "permission": "read", "namespaced": True},
        {"grpc": "/shop.v1.Cart/*", "permission": "write", "audit": True, "cost": 2},
        {"http_prefix": "/api/", "methods": ["GET"], "permission": "read"},
        {"http_prefix": "/api/admin", "permission": "admin", "rate_class": "admin"},
        {"grpc": "/grpc.health.v1.Health/Check", "access": "public"},
        {"grpc": "/shop.v1.Internal/Sync", "access": "internal_peer"},
    ]
}


def test_requests_fall_under_the_most_specific_route() -> None:
    routes = parse_routes(ROUTES)
    assert len(routes) == 6

    def policy(path: str, method: str = "POST") -> Policy | None:
        route = routes.match(path, method)
        return None if route is None else route.policy

    assert policy("/shop.v1.Cart/Get") == Policy(
        access=Access.API_KEY, permission="read", namespaced=True
    )
    assert policy("/shop.v1.Cart/Put") == Policy(
        access=Access.API_KEY, permission="write", audit=True, cost=2
    )
    assert policy("/shop.v1.Carts/Put") is None
    assert policy("/api/orders/7?x=1", "GET") == Policy(access=Access.API_KEY, permission="read")
    assert policy("/api/orders/7", "POST") is None
    assert policy("/api/admin/users", "DELETE") == Policy(
        access=Access.API_KEY, permission="admin", rate_class="admin"
    )
    assert policy("/api/admin", "GET") == Policy(
        access=Access.API_KEY, permission="admin", rate_class="admin"
    )
    assert policy("/api/administrators", "POST") is None
    assert policy("/grpc.health.v1.Health/Check") == Policy(access=Access.PUBLIC)
    assert policy("/shop.v1.Internal/Sync") == Policy(access=Access.INTERNAL_PEER)
    # not normalized: matches nothing, so a prefix cannot be escaped
    for path in ("/api/../admin/x", "/api/./x", "/api//x", "/api/%2e%2e/x", "/api\\x", "api/x"):
        assert policy(path, "GET") is None, path
    assert routes.match("/api/admin/x", "GET") is not None
    assert routes.match("/api/admin/x", "GET").name == "* /api/admin"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"grpc": "/shop.v1.Cart/Get"}, "routes[0]: permission must be one of"),
        ({"grpc": "shop.v1.Cart/Get", "permission": "read"}, "routes[0]: grpc must be"),
        ({"grpc": "/Cart/Get", "permission": "read"}, "routes[0]: grpc must be"),
        ({"http_prefix": "/a/../b", "permission": "read"}, "http_prefix must be a normalized"),
        ({"http_prefix": "/a", "methods": ["FETCH"], "permission": "read"}, "'FETCH'"),
        ({"grpc": "/a.B/C", "http_prefix": "/x", "permission": "read"}, "exactly one of"),
        ({"grpc": "/a.B/C", "permission": "read", "cost": -1}, "cost must be"),
        ({"grpc": "/a.B/C", "permission": "read", "rate_class": "bulk"}, "rate_class must be"),
        ({"grpc": "/a.B/C", "permission": "read", "namespaced": "yes"}, "true or false"),
        ({"grpc": "/a.B/C", "permission": "read", "perm": "x"}, "unknown field 'perm'"),
        ({"grpc": "/a.B/C", "access": "public", "permission": "read"}, "api_key routes only"),
        ({"grpc": "/a.B/C", "access": "public", "namespaced": True}, "need an api_key route"),
        ({"grpc": "/a.B/C", "access": "sidecar"}, "access must be one of"),
    ],
)
def test_a_bad_route_is_named(entry: dict[str, Any], complaint: str) -> None:
    with pytest.raises(RouteError) as info:
        parse_routes({"routes": [entry]})
    assert complaint in str(info.value)


def test_a_route_declared_twice_and_a_bad_shape_are_refused() -> None:
    twice = {"grpc": "/a.B/C", "permission": "read"}
    with pytest.raises(RouteError, match=r"routes\[1\]: /a.B/C is declared twice"):
        parse_routes({"routes": [twice, twice]})
    documents: list[Any] = [[], {"route": []}, {"routes": {}}]
    for document in documents:
        with pytest.raises(RouteError):
            parse_routes(document)


def test_the_file_is_read_as_yaml_or_json(tmp_path: Path) -> None:
    as_json = tmp_path / "routes.json"
    as_json.write_text(json.dumps(ROUTES))
    assert len(load_routes(as_json)) == 6
    as_yaml = tmp_path / "routes.yaml"
    as_yaml.write_text("routes:\n  - grpc: /a.B/C\n    permission: read\n")
    assert len(load_routes(as_yaml)) == 1
    settings = Settings.from_env({"MESHGATE_ROUTE_POLICY_FILE": str(as_yaml)})
    assert settings.routes.match("/a.B/C", "POST") is not None
    assert len(Settings.from_env({}).routes) == 0  # no file: every Check is denied


def test_the_documented_route_policy_file_is_valid() -> None:
    assert len(load_routes(ROOT / "deploy" / "envoy" / "route-policy.yaml")) > 0


def test_a_bad_file_is_refused_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("routes:\n  - grpc: /a.B/C\n    permission: reed\n")
    with pytest.raises(SettingsError, match=r"routes\[0\]: permission must be one of"):
        Settings.from_env({"MESHGATE_ROUTE_POLICY_FILE": str(bad)})
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SettingsError, match="does not parse"):
        load_routes(broken)
    with pytest.raises(SettingsError, match="cannot read"):
        load_routes(tmp_path / "missing.yaml")
