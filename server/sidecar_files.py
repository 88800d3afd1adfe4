"""The policy files: the route policy file, the sidecar bindings and the method policy file.

All are YAML (JSON when the name ends in .json), at most MAX_FILE_BYTES, validated whole:
at start-up a bad file stops the server with a message naming the setting, the entry and
the field; while the server runs each is watched (server/policy_files.py) and a new
content goes through the very same `PolicyFile.parse`, a bad one refused with the same
message. MESHGATE_EXT_AUTHZ_PEERS and the bindings must agree: every allow-listed sidecar
is bound (to the organizations and source principals it speaks for, or to "*" on purpose),
and every binding names an allow-listed sidecar (a binding nobody uses is a typo).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from interceptors.sidecar.bindings import BindingError, SidecarBindings, parse_bindings
from interceptors.sidecar.routes import RouteError, RoutePolicies, parse_routes
from server.env_values import SettingsError
from server.method_policies import MethodPolicies, MethodPolicyError, parse_method_policies

__all__ = [
    "BINDINGS_FILE",
    "MAX_FILE_BYTES",
    "METHOD_POLICY_FILE",
    "ROUTE_POLICY_FILE",
    "PolicyFile",
    "check_bindings",
    "ext_authz_bindings",
    "load_bindings",
    "load_method_policies",
    "load_routes",
]

MAX_FILE_BYTES = 1024 * 1024
_PEERS = "MESHGATE_EXT_AUTHZ_PEERS"


@dataclass(frozen=True, slots=True)
class PolicyFile[T]:
    """One kind of policy file: its setting, how its content is parsed, and the errors that
    name what is wrong in it."""

    setting: str
    parse_document: Callable[[Any], T]
    errors: type[ValueError]

    def read(self, path: Path) -> bytes:
        """The file's content (at most MAX_FILE_BYTES, else SettingsError)."""
        try:
            with path.open("rb") as file:
                content = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise SettingsError(f"{self.setting}: cannot read {path}: {exc.strerror}") from None
        if len(content) > MAX_FILE_BYTES:
            raise SettingsError(f"{self.setting}: {path} is larger than {MAX_FILE_BYTES} bytes")
        return content

    def parse(self, path: Path, content: bytes) -> T:
        """The policies of a content read from `path`; SettingsError names what is wrong."""
        try:
            text = content.decode()
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            return self.parse_document(document)
        except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SettingsError(f"{self.setting}: {path} does not parse: {exc}") from None
        except self.errors as exc:
            raise SettingsError(f"{self.setting}: {path}: {exc}") from None

    def load(self, path: Path) -> T:
        return self.parse(path, self.read(path))


ROUTE_POLICY_FILE: PolicyFile[RoutePolicies] = PolicyFile(
    "MESHGATE_ROUTE_POLICY_FILE", parse_routes, RouteError
)
BINDINGS_FILE: PolicyFile[SidecarBindings] = PolicyFile(
    "MESHGATE_EXT_AUTHZ_BINDINGS_FILE", parse_bindings, BindingError
)
METHOD_POLICY_FILE: PolicyFile[MethodPolicies] = PolicyFile(
    "MESHGATE_METHOD_POLICY_FILE", parse_method_policies, MethodPolicyError
)


def load_routes(path: Path) -> RoutePolicies:
    """The route policy file, validated now: a bad file stops the server with a message
    naming the route and the field."""
    return ROUTE_POLICY_FILE.load(path)


def load_bindings(path: Path) -> SidecarBindings:
    """The sidecar bindings file, validated now (interceptors/sidecar/bindings.py)."""
    return BINDINGS_FILE.load(path)


def load_method_policies(path: Path) -> MethodPolicies:
    """The method policy file, checked for its form now (server/method_policies.py); it is
    checked against the protos' policies when the chain is built."""
    return METHOD_POLICY_FILE.load(path)


def check_bindings(bindings: SidecarBindings, peers: frozenset[str]) -> SidecarBindings:
    """`bindings`, when they agree with the allow-list; SettingsError naming the first
    sidecar that is allow-listed without a binding, or bound without being listed."""
    name = BINDINGS_FILE.setting
    unbound = sorted(peers - bindings.identities)
    if unbound:
        raise SettingsError(f"{name}: {unbound[0]} (on {_PEERS}) has no binding")
    unlisted = sorted(bindings.identities - peers)
    if unlisted:
        raise SettingsError(f"{name}: {unlisted[0]} is bound but not on {_PEERS}")
    return bindings


def ext_authz_bindings(env: Mapping[str, str], peers: frozenset[str]) -> SidecarBindings:
    """The bindings of the allow-listed sidecars; an allow-listed sidecar without one, or a
    binding of a sidecar not allow-listed, stops the server."""
    raw = env.get(BINDINGS_FILE.setting)
    if not raw:
        if peers:
            raise SettingsError(
                f"{_PEERS} needs {BINDINGS_FILE.setting}: bind each sidecar to the organizations"
                ' and source principals it speaks for ("*" for any; docs/sidecars.md#bindings)'
            )
        return SidecarBindings()
    return check_bindings(load_bindings(Path(raw)), peers)
