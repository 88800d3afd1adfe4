"""Dry-run (shadow) decisions: what a policy marked dry-run would have refused.

A dry-run rule is computed as if it were enforced, and the call goes on under the rules in
force; what it would have refused is kept on the call (`CallState.dry_run`) for the
observers to record: a counter, a field of the access line, an audit event. Its reason is
the one the refusal would carry if the rule were enforcing (the ErrorInfo reasons of
docs/api.md), so a rollout reads the same before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DryRunDenial", "DryRunReason", "DryRunRule"]


class DryRunRule(StrEnum):
    """What kind of rule was in dry run (a metric label: a fixed set)."""

    ROUTE = "route"  # an entry of the route policy file (ext_authz Check)
    METHOD = "method"  # an entry of the method policy file (meshgate's own methods)
    PLAN = "plan"  # a plan's dry-run limit of a rate class
    KEY = "key"  # a key's own rate limit marked dry_run


class DryRunReason(StrEnum):
    """Why the rule would have refused the call: the refusal's reason if it were enforcing
    (a metric label: a fixed set)."""

    API_KEY_INVALID = "API_KEY_INVALID"
    PERMISSION_DENIED_LEVEL = "PERMISSION_DENIED_LEVEL"
    PEER_NOT_ALLOWED = "PEER_NOT_ALLOWED"
    NAMESPACE_MISSING = "NAMESPACE_MISSING"
    NAMESPACE_NOT_FOUND = "NAMESPACE_NOT_FOUND"
    NAMESPACE_NOT_ALLOWED = "NAMESPACE_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"


@dataclass(frozen=True, slots=True)
class DryRunDenial:
    """One dry-run rule that would have refused the call: its kind, its name (the route, the
    method, the plan; a key's own limit has none: the access line names the key) and why."""

    rule: DryRunRule
    reason: DryRunReason
    name: str = ""
