"""Plans: per route class rate limits and a monthly credit allowance.

Plans are configuration (a JSON file, `MESHGATE_PLANS_FILE`, default
`server/plans.json`), validated once at start-up: a missing class, a limit
outside the bounds every token bucket keeps (a key's own limit too), or an
unknown field stops the server with a message naming it.

A class's limit may carry a `dry_run` limit beside it: computed on buckets of its own as
if enforced, recorded when it would refuse, never enforced (calls/dry_run.py). The limit
in force stays: every way in (direct calls, `Check`, descriptors) shares its bucket.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_BURST",
    "MAX_PER_SECOND",
    "MAX_REFILL_S",
    "MIN_PER_SECOND",
    "RATE_CLASSES",
    "Limit",
    "Plan",
    "PlanError",
    "PlanLookup",
    "parse_plans",
]

RATE_CLASSES = ("metadata", "data", "search", "admin")


class PlanError(ValueError):
    """The plans configuration is invalid; the message says where."""


# Bounds of every token bucket, a plan's or a key's own. Outside them the bucket's
# arithmetic (refill time, expiry in Redis) leaves the range a limiter can honour.
MIN_PER_SECOND = 0.001
MAX_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000
MAX_REFILL_S = 7 * 86_400  # burst / per_second: an empty bucket refills within a week


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket: `per_second` sustained, up to `burst` at once."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (
            isinstance(self.per_second, int | float)
            and math.isfinite(self.per_second)
            and MIN_PER_SECOND <= self.per_second <= MAX_PER_SECOND
        ):
            raise PlanError(
                f"per_second must be between {MIN_PER_SECOND:g} and {MAX_PER_SECOND:,.0f},"
                f" got {self.per_second!r}"
            )
        if (
            isinstance(self.burst, bool)
            or not isinstance(self.burst, int)
            or not 1 <= self.burst <= MAX_BURST
        ):
            raise PlanError(
                f"burst must be an integer between 1 and {MAX_BURST:,}, got {self.burst!r}"
            )
        if self.burst / self.per_second > MAX_REFILL_S:
            raise PlanError(
                f"burst / per_second must be at most {MAX_REFILL_S:,} seconds (an empty"
                " bucket refills within 7 days)"
            )

    @classmethod
    def clamped(cls, *, per_second: float, burst: int) -> Limit:
        """The nearest valid limit: for values stored before the bounds existed."""
        rate = per_second if math.isfinite(per_second) else MIN_PER_SECOND
        rate = min(max(rate, MIN_PER_SECOND), MAX_PER_SECOND)
        size = min(max(int(burst), 1), MAX_BURST, math.floor(rate * MAX_REFILL_S) or 1)
        return cls(per_second=rate, burst=size)

    def narrowed(self, plan: Limit) -> Limit:
        """A key's own limit never exceeds its plan's: the smaller rate and burst."""
        return Limit(
            per_second=min(self.per_second, plan.per_second), burst=min(self.burst, plan.burst)
        )


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    monthly_credits: int
    limits: Mapping[str, Limit]
    # rate class -> its limit in dry run (only the classes that have one)
    dry_run_limits: Mapping[str, Limit] = field(default_factory=dict)


_LOG = logging.getLogger("meshgate.plans")


class PlanLookup:
    """An organization's plan by name; one on a plan this server does not know gets the
    default (with a warning), so a stale plan name never refuses calls."""

    def __init__(self, plans: Mapping[str, Plan], default: str) -> None:
        self._plans = plans
        self._default = plans[default]

    def __call__(self, name: str) -> Plan:
        plan = self._plans.get(name)
        if plan is None:
            _LOG.warning("organization on unknown plan %r: using %r", name, self._default.name)
            return self._default
        return plan


def _limit(where: str, raw: Any, *, dry_run: bool = False) -> Limit:
    allowed = {"per_second", "burst", "dry_run"} if dry_run else {"per_second", "burst"}
    if not isinstance(raw, Mapping) or not {"per_second", "burst"} <= set(raw) <= allowed:
        raise PlanError(
            f"{where} must be an object with per_second and burst"
            + (" (and optionally dry_run, a limit of the same form)" if dry_run else "")
        )
    try:
        return Limit(per_second=float(raw["per_second"]), burst=raw["burst"])
    except (PlanError, TypeError, ValueError) as exc:
        raise PlanError(f"{where}: {exc}") from None


def parse_plans(raw: Any) -> dict[str, Plan]:
    if not isinstance(raw, Mapping) or not raw:
        raise PlanError("plans must be a non-empty object of plan name -> plan")
    plans: dict[str, Plan] = {}
    for name, body in raw.items():
        if not isinstance(body, Mapping) or set(body) != {"monthly_credits", "limits"}:
            raise PlanError(f"plan {name!r} must have exactly monthly_credits and limits")
        credits = body["monthly_credits"]
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
            raise PlanError(f"plan {name!r}: monthly_credits must be a non-negative integer")
        limits = body["limits"]
        if not isinstance(limits, Mapping) or set(limits) != set(RATE_CLASSES):
            raise PlanError(f"plan {name!r}: limits must name exactly {', '.join(RATE_CLASSES)}")
        plans[name] = Plan(
            name=name,
            monthly_credits=credits,
            limits={
                c: _limit(f"plan {name!r} limits.{c}", limits[c], dry_run=True)
                for c in RATE_CLASSES
            },
            dry_run_limits={
                c: _limit(f"plan {name!r} limits.{c}.dry_run", limits[c]["dry_run"])
                for c in RATE_CLASSES
                if "dry_run" in limits[c]
            },
        )
    return plans
