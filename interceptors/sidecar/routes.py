"""The route policy file: other services' routes mapped to the policy fields the protos declare.

A sidecar asks about calls to *its* service, whose protos meshgate has never seen, so
the policy (access, permission, namespaced, cost, rate class, audit) comes from this
file instead of a method option. Routes are gRPC methods (`/pkg.Service/Method`, or
`/pkg.Service/*` for every method of a service) or HTTP path prefixes with optional
methods. The file is validated whole, at start-up and on each reload
(server/policy_files.py); a route it does not name is refused (fail closed), exactly
like a meshgate method without a policy.

Matching: an exact gRPC method first, then its service's `*`, then the longest HTTP
prefix whose methods include the request's (a prefix matches at a `/` boundary or
exactly). A prefix must not be escapable, whatever the upstream does with a path
before resolving it, so these paths match nothing (and are refused):

- not normalized: dot segments, empty segments, backslashes;
- any `;` (path parameters: `/api/read/..;/admin` is `/admin` to upstreams that strip
  them before resolving dot segments, Tomcat, Spring, Jetty);
- any `%` escape (`/api/%61dmin`, `/api/admin%3B`): meshgate does not decode, so it
  never judges a path other than the one it was given;
- anything but visible ASCII (spaces, control characters, non-ASCII bytes).

Prefixes compare case-sensitively. A path that would fall under a longer prefix if
case were ignored (`/api/ADMIN/users` beside `/api/admin`) is refused rather than
judged under the shorter one, for upstreams that ignore case. The file holds at most
MAX_ROUTES routes; no two prefixes differ in case only.

Dry run: an entry with `dry_run: true` is not in force. `match` ignores it; `dry_run`
answers which dry-run entry a request would match if every dry-run entry were enforced
(each replacing an enforced entry of the same route, if there is one), so the decider
can judge the call by it too (interceptors/dry_run.py). A route may have one enforced
entry and one dry-run entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calls.policy import Access, Policy
from storage.core.plans import RATE_CLASSES

__all__ = ["Route", "RouteError", "RoutePolicies", "parse_routes"]

_PERMISSIONS = ("read", "write", "delete", "admin")
_ACCESS = {
    "api_key": Access.API_KEY,
    "public": Access.PUBLIC,
    "internal_peer": Access.INTERNAL_PEER,
}
_GRPC_METHOD = re.compile(r"^/[A-Za-z_][\w.]*\.[A-Za-z_]\w*/(?:[A-Za-z_]\w*|\*)$")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_FIELDS = frozenset(
    {"grpc", "http_prefix", "methods", "access", "permission", "namespaced", "cost"}
    | {"rate_class", "audit", "dry_run"}
)
_UNNORMALIZED = re.compile(r"(^|/)\.\.?(/|$)|//|[;%\\]|[^\x21-\x7e]")
MAX_COST = 1_000_000
MAX_ROUTES = 1000


class RouteError(ValueError):
    """The route policy file is invalid; the message names the route and the field."""


@dataclass(frozen=True, slots=True)
class Route:
    """One route and its policy; `name` is what logs, usage and audit record as the method."""

    name: str
    policy: Policy
    # not in force: judged and recorded only (interceptors/dry_run.py)
    dry_run: bool = False


# one entry of the file: its route key (a gRPC method, a prefix), its HTTP methods (empty:
# any), the route, and whether it is a gRPC route
_Entry = tuple[str, frozenset[str], Route, bool]


@dataclass(frozen=True, slots=True)
class _Prefix:
    prefix: str
    methods: frozenset[str]  # empty: any method
    route: Route
    # the prefix lowercased, and with a trailing `/` (what a path under it starts with)
    folded: str = ""
    under: str = ""
    folded_under: str = ""


class _Table:
    """One set of routes, matched as the module says."""

    def __init__(self, routes: Sequence[_Entry]) -> None:
        self.methods: dict[str, Route] = {}
        prefixes: list[_Prefix] = []
        for key, methods, route, grpc_route in routes:
            if grpc_route:
                self.methods[key] = route
            else:
                under = key.rstrip("/") + "/"
                prefixes.append(_Prefix(key, methods, route, key.lower(), under, under.lower()))
        self.prefixes = tuple(sorted(prefixes, key=lambda p: -len(p.prefix)))

    def match(self, path: str, method: str) -> Route | None:
        route = self.methods.get(path)
        if route is not None:
            return route
        service, slash, _ = path.rpartition("/")
        if slash and service:
            route = self.methods.get(f"{service}/*")
            if route is not None:
                return route
        method = method.upper()
        folded = path.lower()
        for prefix in self.prefixes:  # the longest first
            if prefix.methods and method not in prefix.methods:
                continue
            if path == prefix.prefix or path.startswith(prefix.under):
                return prefix.route
            if folded == prefix.folded or folded.startswith(prefix.folded_under):
                return None  # under this longer prefix but for case: refused, not shorter
        return None


class RoutePolicies:
    """Route -> policy for the sidecars' questions; None for a route without a policy."""

    def __init__(self, routes: Sequence[_Entry] = ()) -> None:
        self._count = len(routes)
        self._in_force = _Table([e for e in routes if not e[2].dry_run])
        # the table as it would be with the dry-run entries enforced (None: there are none)
        dry = {(e[0], e[1]) for e in routes if e[2].dry_run}
        self._with_dry_run = (
            _Table([e for e in routes if e[2].dry_run or (e[0], e[1]) not in dry]) if dry else None
        )

    def __len__(self) -> int:
        return self._count

    def match(self, path: str, method: str) -> Route | None:
        """The route in force of a request (`:path` with any query string, HTTP method)."""
        path = path.partition("?")[0]
        if not path.startswith("/") or _UNNORMALIZED.search(path):
            return None
        return self._in_force.match(path, method)

    def dry_run(self, path: str, method: str) -> Route | None:
        """The dry-run entry a request would match if the dry-run entries were enforced;
        None when there is none (the request would be judged as it is now)."""
        if self._with_dry_run is None:
            return None
        path = path.partition("?")[0]
        if not path.startswith("/") or _UNNORMALIZED.search(path):
            return None
        route = self._with_dry_run.match(path, method)
        return route if route is not None and route.dry_run else None


def parse_routes(document: Any) -> RoutePolicies:
    """The policies of a parsed route policy file (`{"routes": [...]}`); RouteError names
    the first problem."""
    if not isinstance(document, Mapping) or set(document) != {"routes"}:
        raise RouteError('the file must be a mapping with one key, "routes" (a list)')
    entries = document["routes"]
    if not isinstance(entries, list):
        raise RouteError('"routes" must be a list')
    if len(entries) > MAX_ROUTES:
        raise RouteError(f"at most {MAX_ROUTES} routes")
    parsed: list[_Entry] = []
    seen: set[tuple[str, frozenset[str], bool]] = set()
    prefixes: dict[str, str] = {}  # lowercased -> as declared
    for index, entry in enumerate(entries):
        where = f"routes[{index}]"
        key, methods, route, grpc_route = _route(entry, where)
        if (key, methods, route.dry_run) in seen:
            raise RouteError(
                f"{where}: {key} is declared twice"
                + (" in dry run" if route.dry_run else " (one entry may add dry_run: true)")
            )
        if not grpc_route:
            other = prefixes.setdefault(key.lower(), key)
            if other != key:
                raise RouteError(f"{where}: {key} differs from {other} in case only")
        seen.add((key, methods, route.dry_run))
        parsed.append((key, methods, route, grpc_route))
    return RoutePolicies(parsed)


def _route(entry: Any, where: str) -> _Entry:
    if not isinstance(entry, Mapping):
        raise RouteError(f"{where} must be a mapping")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise RouteError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    if ("grpc" in entry) == ("http_prefix" in entry):
        raise RouteError(f"{where}: give exactly one of grpc or http_prefix")
    if "grpc" in entry:
        key = entry["grpc"]
        if not isinstance(key, str) or not _GRPC_METHOD.match(key):
            raise RouteError(f"{where}: grpc must be /pkg.Service/Method or /pkg.Service/*")
        if "methods" in entry:
            raise RouteError(f"{where}: methods apply to http_prefix routes only")
        methods: frozenset[str] = frozenset()
        name = key
    else:
        key = entry["http_prefix"]
        if not isinstance(key, str) or not key.startswith("/") or _UNNORMALIZED.search(key):
            raise RouteError(
                f"{where}: http_prefix must be a normalized path starting with / (visible"
                " ASCII, no ';', '%', '\\', empty or dot segments)"
            )
        methods = _methods(entry.get("methods", []), where)
        name = f"{','.join(sorted(methods)) or '*'} {key}"
    dry_run = entry.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise RouteError(f"{where}: dry_run must be true or false")
    route = Route(name=name, policy=_policy(entry, where), dry_run=dry_run)
    return key, methods, route, "grpc" in entry


def _methods(raw: Any, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        raise RouteError(f"{where}: methods must be a list of HTTP methods")
    methods = frozenset(m.upper() for m in raw)
    if not methods <= _HTTP_METHODS:
        raise RouteError(f"{where}: unknown HTTP method {sorted(methods - _HTTP_METHODS)[0]!r}")
    return methods


def _policy(entry: Mapping[str, Any], where: str) -> Policy:
    access = _ACCESS.get(entry.get("access", "api_key"))
    if access is None:
        raise RouteError(f"{where}: access must be one of {', '.join(_ACCESS)}")
    permission = entry.get("permission")
    if access is Access.API_KEY and permission not in _PERMISSIONS:
        raise RouteError(f"{where}: permission must be one of {', '.join(_PERMISSIONS)}")
    if access is not Access.API_KEY and permission is not None:
        raise RouteError(f"{where}: permission applies to api_key routes only")
    namespaced, audit = entry.get("namespaced", False), entry.get("audit", False)
    if not isinstance(namespaced, bool) or not isinstance(audit, bool):
        raise RouteError(f"{where}: namespaced and audit must be true or false")
    cost = entry.get("cost", 0)
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= MAX_COST:
        raise RouteError(f"{where}: cost must be a whole number from 0 to {MAX_COST}")
    rate_class = entry.get("rate_class", "metadata")
    if rate_class not in RATE_CLASSES:
        raise RouteError(f"{where}: rate_class must be one of {', '.join(RATE_CLASSES)}")
    if access is not Access.API_KEY and (namespaced or cost):
        raise RouteError(f"{where}: namespaced and cost need an api_key route")
    return Policy(
        access=access,
        permission=permission,
        namespaced=namespaced,
        cost=cost,
        rate_class=rate_class,
        audit=audit,
    )
