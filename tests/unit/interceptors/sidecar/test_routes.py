"""The route policy file: what it accepts, what it refuses (naming the route and the field),
and which route a request falls under. That a bad file stops `meshgate serve`:
tests/unit/server/test_cli.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from calls.policy import Access, Policy
from interceptors.sidecar.routes import MAX_ROUTES, RouteError, parse_routes
from server.settings import Settings, SettingsError, load_routes
from server.sidecar_files import MAX_FILE_BYTES

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
    # not normalized, path parameters, escapes, not visible ASCII: matches nothing, so a
    # prefix cannot be escaped
    for path in (
        "/api/../admin/x",
        "/api/./x",
        "/api//x",
        "/api/%2e%2e/x",
        "/api\\x",
        "api/x",
        "/api/..;/admin",
        "/api/x;y",
        "/api/%61",
        "/api/x%",
        "/api/a b",
        "/api/\u00e9",
    ):
        assert policy(path, "GET") is None, path
    # case: a path under a longer prefix but for case is refused, not judged under `/api/`
    assert policy("/api/ADMIN/users", "GET") is None
    assert policy("/api/Orders", "GET") == Policy(access=Access.API_KEY, permission="read")
    assert routes.match("/api/admin/x", "GET") is not None
    assert routes.match("/api/admin/x", "GET").name == "* /api/admin"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"grpc": "/shop.v1.Cart/Get"}, "routes[0]: permission must be one of"),
        ({"grpc": "shop.v1.Cart/Get", "permission": "read"}, "routes[0]: grpc must be"),
        ({"grpc": "/Cart/Get", "permission": "read"}, "routes[0]: grpc must be"),
        ({"http_prefix": "/a/../b", "permission": "read"}, "http_prefix must be a normalized"),
        ({"http_prefix": "/a;b", "permission": "read"}, "http_prefix must be a normalized"),
        ({"http_prefix": "/a%62", "permission": "read"}, "http_prefix must be a normalized"),
        ({"http_prefix": "/a b", "permission": "read"}, "http_prefix must be a normalized"),
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


def test_the_file_is_bounded_and_prefixes_differ_in_more_than_case(tmp_path: Path) -> None:
    """At most MAX_ROUTES routes in at most MAX_FILE_BYTES (every Check scans the prefixes);
    two prefixes that differ in case only would make a path's route depend on its case."""
    many = [{"grpc": f"/a.B/M{i}", "permission": "read"} for i in range(MAX_ROUTES + 1)]
    with pytest.raises(RouteError, match=f"at most {MAX_ROUTES} routes"):
        parse_routes({"routes": many})
    assert len(parse_routes({"routes": many[:MAX_ROUTES]})) == MAX_ROUTES
    cased = [{"http_prefix": p, "permission": "read"} for p in ("/api/admin", "/api/Admin")]
    with pytest.raises(RouteError, match=r"routes\[1\]: /api/Admin differs from /api/admin"):
        parse_routes({"routes": cased})
    big = tmp_path / "routes.yaml"
    big.write_text("routes: []\n" + "#" * MAX_FILE_BYTES)
    with pytest.raises(SettingsError, match=f"larger than {MAX_FILE_BYTES} bytes"):
        load_routes(big)


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


def test_a_dry_run_entry_is_judged_beside_the_route_in_force_never_instead_of_it() -> None:
    routes = parse_routes(
        {
            "routes": [
                {"http_prefix": "/api", "permission": "read"},
                {"http_prefix": "/api/admin", "permission": "admin", "dry_run": True},
                {"grpc": "/shop.v1.Cart/*", "permission": "read"},
                {"grpc": "/shop.v1.Cart/*", "permission": "write", "dry_run": True},
                {"grpc": "/shop.v1.New/Get", "permission": "read", "dry_run": True},
            ]
        }
    )
    assert len(routes) == 5

    def names(path: str) -> tuple[str | None, str | None]:
        in_force, dry_run = routes.match(path, "GET"), routes.dry_run(path, "GET")
        return (
            None if in_force is None else in_force.name,
            None if dry_run is None else dry_run.name,
        )

    # a narrower prefix in dry run: the broader one decides, the new one is judged too
    assert names("/api/admin/users") == ("* /api", "* /api/admin")
    assert names("/api/orders") == ("* /api", None)
    # the same route in dry run: the entry in force decides
    assert names("/shop.v1.Cart/Put") == ("/shop.v1.Cart/*", "/shop.v1.Cart/*")
    assert routes.dry_run("/shop.v1.Cart/Put", "GET").policy.permission == "write"  # type: ignore[union-attr]
    # a new route only in dry run is no route yet: refused, nothing to judge beside it
    assert names("/shop.v1.New/Get") == (None, "/shop.v1.New/Get")
    assert routes.dry_run("/api/../api/admin", "GET") is None
    # without dry-run entries there is nothing to judge
    assert parse_routes(ROUTES).dry_run("/api/admin/users", "GET") is None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"grpc": "/a.B/C", "permission": "read", "dry_run": "yes"}],
            "routes[0]: dry_run must be true or false",
        ),
        (
            [{"grpc": "/a.B/C", "permission": "read"}, {"grpc": "/a.B/C", "permission": "admin"}],
            "routes[1]: /a.B/C is declared twice (one entry may add dry_run: true)",
        ),
        (
            [
                {"grpc": "/a.B/C", "permission": "read", "dry_run": True},
                {"grpc": "/a.B/C", "permission": "admin", "dry_run": True},
            ],
            "routes[1]: /a.B/C is declared twice in dry run",
        ),
    ],
)
def test_one_entry_in_force_and_one_in_dry_run_per_route(
    entries: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(RouteError) as refused:
        parse_routes({"routes": entries})
    assert str(refused.value) == message
