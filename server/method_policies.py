"""The method policy file: narrower policies for meshgate's own methods, enforced or in dry run.

meshgate's methods declare their policies in the protos (server/policies.py). To roll out
a narrower one without a release (first in dry run, then enforced), the file of
MESHGATE_METHOD_POLICY_FILE (YAML, or JSON when the name ends in .json) may override a
method's policy, and only to narrow it:

    methods:
      - method: /meshgate.v1.DocumentService/DeleteDocument
        permission: admin
        dry_run: true          # judged and recorded, not enforced (default false)

What may be overridden, and why nothing else:

- `permission`, to `admin` only, on an API-key method that needs READ, WRITE or DELETE.
  ADMIN implies every permission, so an ADMIN-only method admits a subset of the keys
  it admitted; READ, WRITE and DELETE imply none of one another, so moving a method
  between them would admit keys it refuses today (a WRITE-only key to a READ method).
- Nothing else. `access` and `namespaced` change what the servicer is given (a
  principal, a namespace), not only who may call; `cost` is a price, and `rate_class`
  names the bucket the method shares with the other methods of its class: neither can
  be judged in dry run without spending credits or tokens (a rate limit is rolled out
  with the plan's or the key's own dry run, docs/limits.md#dry-run); and `audit` decides
  nothing.

A method appears at most once; the file holds at most MAX_METHOD_ENTRIES entries and is
at most 1 MiB (server/sidecar_files.py). The file is checked whole at start-up (a bad
one stops the server) and when it changes (server/policy_files.py: a bad one is refused
and the policies in force stay); the message names the entry and the field.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calls.policy import Access, Policy
from server.env_values import SettingsError

__all__ = [
    "MAX_METHOD_ENTRIES",
    "MethodPolicies",
    "MethodPolicyError",
    "method_policies_applied",
    "parse_method_policies",
]

MAX_METHOD_ENTRIES = 1000
_FIELDS = frozenset({"method", "permission", "dry_run"})
_METHOD = re.compile(r"^/meshgate\.v1\.[A-Za-z]\w*/[A-Za-z]\w*$")


class MethodPolicyError(ValueError):
    """The method policy file is invalid; the message names the entry and the field."""


@dataclass(frozen=True, slots=True)
class _Override:
    where: str
    method: str
    permission: str
    dry_run: bool


@dataclass(frozen=True, slots=True)
class MethodPolicies:
    """The file's overrides, checked for their form; `applied_to` checks them against the
    declared policies."""

    overrides: tuple[_Override, ...] = ()

    def __len__(self) -> int:
        return len(self.overrides)

    def applied_to(
        self, declared: Mapping[str, Policy]
    ) -> tuple[dict[str, Policy], dict[str, Policy]]:
        """The method -> policy table with the enforced overrides applied, and the policies
        in dry run by method; MethodPolicyError when an override widens or names no method."""
        policies: dict[str, Policy] = dict(declared)
        dry_run: dict[str, Policy] = {}
        for override in self.overrides:
            policy = declared.get(override.method)
            if policy is None or policy.access is not Access.API_KEY:
                raise MethodPolicyError(
                    f"{override.where}: {override.method} is not a meshgate method called with"
                    " an API key"
                )
            if policy.permission == override.permission:
                raise MethodPolicyError(
                    f"{override.where}: {override.method} already needs"
                    f" {override.permission.upper()}: nothing to narrow"
                )
            narrowed = dataclasses.replace(policy, permission=override.permission)
            (dry_run if override.dry_run else policies)[override.method] = narrowed
        return policies, dry_run


def parse_method_policies(document: Any) -> MethodPolicies:
    """The overrides of a parsed file (`{"methods": [...]}`); MethodPolicyError names the
    first problem."""
    if not isinstance(document, Mapping) or set(document) != {"methods"}:
        raise MethodPolicyError('the file must be a mapping with one key, "methods" (a list)')
    entries = document["methods"]
    if not isinstance(entries, list):
        raise MethodPolicyError('"methods" must be a list')
    if len(entries) > MAX_METHOD_ENTRIES:
        raise MethodPolicyError(f"at most {MAX_METHOD_ENTRIES} entries")
    overrides: list[_Override] = []
    for index, entry in enumerate(entries):
        where = f"methods[{index}]"
        if not isinstance(entry, Mapping):
            raise MethodPolicyError(f"{where} must be a mapping")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise MethodPolicyError(
                f"{where}: unknown field {sorted(unknown)[0]!r} (only permission may be"
                " overridden, to admin)"
            )
        method = entry.get("method")
        if not isinstance(method, str) or not _METHOD.match(method):
            raise MethodPolicyError(f"{where}: method must be /meshgate.v1.<Service>/<Method>")
        if any(o.method == method for o in overrides):
            raise MethodPolicyError(f"{where}: {method} is overridden twice")
        if entry.get("permission") != "admin":
            raise MethodPolicyError(
                f"{where}: permission must be admin (the only permission that admits fewer"
                " keys than another: ADMIN implies all, the others imply none of each other)"
            )
        dry_run = entry.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise MethodPolicyError(f"{where}: dry_run must be true or false")
        overrides.append(_Override(where, method, "admin", dry_run))
    return MethodPolicies(tuple(overrides))


def method_policies_applied(
    overrides: MethodPolicies, declared: Mapping[str, Policy]
) -> tuple[dict[str, Policy], dict[str, Policy]]:
    """`MethodPolicies.applied_to`, its error naming the setting (SettingsError)."""
    try:
        return overrides.applied_to(declared)
    except MethodPolicyError as exc:
        raise SettingsError(f"MESHGATE_METHOD_POLICY_FILE: {exc}") from None
