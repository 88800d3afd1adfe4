"""Sidecar bindings: which organizations and source principals each sidecar may speak for.

Being on MESHGATE_EXT_AUTHZ_PEERS lets a sidecar ask; its binding (the file of
MESHGATE_EXT_AUTHZ_BINDINGS_FILE) says about whom. Without it, one sidecar's credential
could name any organization in a `ShouldRateLimit` descriptor and drain the bucket that
organization's direct calls draw from, or put any `source.principal` in a CheckRequest
(an internal peer's, say). So:

- `Check` refuses a call whose source principal is outside the asking sidecar's
  principals, and a key of an organization outside its organizations (PERMISSION_DENIED,
  before any bucket, credit or namespace is touched);
- `ShouldRateLimit` refuses the whole request when any descriptor names an organization
  outside them (PERMISSION_DENIED, before any descriptor draws a token).

The file, YAML (JSON when its name ends in .json), one entry per sidecar identity:

    sidecars:
      - identity: spiffe://meshgate.local/sidecar/shop/shop
        organizations: [org_...]                     # or "*": any organization
        principals: ["spiffe://cluster.local/ns/*/sa/*"]   # or "*": any principal

`principals` entries are those of a key's workload binding (storage/core/peer_bindings.py):
exact identities and SPIFFE path patterns, compared segment by segment. An empty source
principal is within "*" only. Every field is required: a sidecar bound to any organization
says so ("*"), it is never the silent default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage.core.errors import InvalidArgumentError
from storage.core.ids import ORGANIZATION_ID_RE
from storage.core.peer_bindings import PeerBinding, parse_binding

__all__ = [
    "ANY",
    "MAX_SIDECARS",
    "MAX_SIDECAR_ORGANIZATIONS",
    "BindingError",
    "SidecarBinding",
    "SidecarBindings",
    "parse_bindings",
]

ANY = "*"
MAX_SIDECARS = 10_000
MAX_SIDECAR_ORGANIZATIONS = 10_000
_FIELDS = frozenset({"identity", "organizations", "principals"})


class BindingError(ValueError):
    """The bindings file is invalid; the message names the entry and the field."""


@dataclass(frozen=True, slots=True)
class SidecarBinding:
    """One sidecar's reach: None is any (`*`)."""

    identity: str
    organizations: frozenset[str] | None
    principals: PeerBinding | None

    def speaks_for_organization(self, organization_id: str) -> bool:
        return self.organizations is None or organization_id in self.organizations

    def speaks_for_principal(self, principal: str) -> bool:
        return self.principals is None or self.principals.admits(principal)


class SidecarBindings:
    """Sidecar identity -> its binding; an identity without one may speak for nobody."""

    def __init__(self, bindings: Mapping[str, SidecarBinding] | None = None) -> None:
        self._bindings = dict(bindings or {})

    def of(self, identity: str | None) -> SidecarBinding | None:
        return self._bindings.get(identity) if identity else None

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)

    @classmethod
    def any_for(cls, identities: frozenset[str]) -> SidecarBindings:
        """Each identity bound to any organization and principal (what every allow-listed
        sidecar could do before bindings existed: for tests and a deliberate opt-in)."""
        return cls({i: SidecarBinding(i, None, None) for i in identities})


def parse_bindings(document: Any) -> SidecarBindings:
    """The bindings of a parsed file (`{"sidecars": [...]}`); BindingError names the first
    problem."""
    if not isinstance(document, Mapping) or set(document) != {"sidecars"}:
        raise BindingError('the file must be a mapping with one key, "sidecars" (a list)')
    entries = document["sidecars"]
    if not isinstance(entries, list):
        raise BindingError('"sidecars" must be a list')
    if len(entries) > MAX_SIDECARS:
        raise BindingError(f"at most {MAX_SIDECARS} sidecars")
    bindings: dict[str, SidecarBinding] = {}
    for index, entry in enumerate(entries):
        where = f"sidecars[{index}]"
        binding = _binding(entry, where)
        if binding.identity in bindings:
            raise BindingError(f"{where}: {binding.identity} is bound twice")
        bindings[binding.identity] = binding
    return SidecarBindings(bindings)


def _binding(entry: Any, where: str) -> SidecarBinding:
    if not isinstance(entry, Mapping):
        raise BindingError(f"{where} must be a mapping")
    if set(entry) != _FIELDS:
        missing, unknown = _FIELDS - set(entry), set(entry) - _FIELDS
        if unknown:
            raise BindingError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        raise BindingError(f"{where}: {sorted(missing)[0]} is required ({ANY!r} for any)")
    identity = entry["identity"]
    if not isinstance(identity, str) or not identity or len(identity) > 2048:
        raise BindingError(f"{where}: identity must be the sidecar's certificate identity")
    return SidecarBinding(
        identity=identity,
        organizations=_organizations(entry["organizations"], where),
        principals=_principals(entry["principals"], where),
    )


def _organizations(raw: Any, where: str) -> frozenset[str] | None:
    if raw == ANY:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_SIDECAR_ORGANIZATIONS:
        raise BindingError(
            f"{where}: organizations must be {ANY!r} or a list of at most"
            f" {MAX_SIDECAR_ORGANIZATIONS} organization ids"
        )
    for value in raw:
        if not isinstance(value, str) or not ORGANIZATION_ID_RE.match(value):
            raise BindingError(f"{where}: {str(value)[:64]!r} is not an organization id (org_...)")
    return frozenset(raw)


def _principals(raw: Any, where: str) -> PeerBinding | None:
    if raw == ANY:
        return None
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise BindingError(f"{where}: principals must be {ANY!r} or a list of identities")
    if not raw:
        raise BindingError(f"{where}: principals may not be empty (no call would pass)")
    try:
        binding = parse_binding(raw)
    except InvalidArgumentError as exc:
        raise BindingError(f"{where}: principals: {exc.message}") from None
    assert binding is not None  # a non-empty list
    return binding
