"""The sidecars' two files, read once at start-up: the route policy file and the bindings.

Both are YAML (JSON when the name ends in .json), at most MAX_FILE_BYTES, validated
whole before the server starts: a bad file stops it with a message naming the setting,
the entry and the field. MESHGATE_EXT_AUTHZ_PEERS and the bindings must agree: every
allow-listed sidecar is bound (to the organizations and source principals it speaks for,
or to "*" on purpose), and every binding names an allow-listed sidecar (a binding nobody
uses is a typo).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from interceptors.sidecar.bindings import BindingError, SidecarBindings, parse_bindings
from interceptors.sidecar.routes import RouteError, RoutePolicies, parse_routes
from server.env_values import SettingsError

__all__ = ["MAX_FILE_BYTES", "ext_authz_bindings", "load_bindings", "load_routes"]

MAX_FILE_BYTES = 1024 * 1024
_BINDINGS = "MESHGATE_EXT_AUTHZ_BINDINGS_FILE"
_PEERS = "MESHGATE_EXT_AUTHZ_PEERS"


def _load[T](name: str, path: Path, parse: Callable[[Any], T], errors: type[ValueError]) -> T:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SettingsError(f"{name}: {path} is larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return parse(document)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"{name}: {path} does not parse: {exc}") from None
    except errors as exc:
        raise SettingsError(f"{name}: {path}: {exc}") from None


def load_routes(path: Path) -> RoutePolicies:
    """The route policy file, validated now: a bad file stops the server with a message
    naming the route and the field."""
    return _load("MESHGATE_ROUTE_POLICY_FILE", path, parse_routes, RouteError)


def load_bindings(path: Path) -> SidecarBindings:
    """The sidecar bindings file, validated now (interceptors/sidecar/bindings.py)."""
    return _load(_BINDINGS, path, parse_bindings, BindingError)


def ext_authz_bindings(env: Mapping[str, str], peers: frozenset[str]) -> SidecarBindings:
    """The bindings of the allow-listed sidecars; an allow-listed sidecar without one, or a
    binding of a sidecar not allow-listed, stops the server."""
    raw = env.get(_BINDINGS)
    if not raw:
        if peers:
            raise SettingsError(
                f"{_PEERS} needs {_BINDINGS}: bind each sidecar to the organizations and"
                ' source principals it speaks for ("*" for any; docs/sidecars.md#bindings)'
            )
        return SidecarBindings()
    bindings = load_bindings(Path(raw))
    unbound = sorted(peers - bindings.identities)
    if unbound:
        raise SettingsError(f"{_BINDINGS}: {unbound[0]} (on {_PEERS}) has no binding")
    unlisted = sorted(bindings.identities - peers)
    if unlisted:
        raise SettingsError(f"{_BINDINGS}: {unlisted[0]} is bound but not on {_PEERS}")
    return bindings
