"""Plans: per route class rate limits and a monthly credit allowance.

Plans are configuration (a JSON file, `MESHGATE_PLANS_FILE`, default
`server/plans.json`), validated once at start-up: a missing class, a zero or
negative limit, or an unknown field stops the server with a message naming it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RATE_CLASSES", "Limit", "Plan", "PlanError", "PlanLookup", "parse_plans"]

RATE_CLASSES = ("metadata", "data", "search", "admin")


class PlanError(ValueError):
    """The plans configuration is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket: `per_second` sustained, up to `burst` at once."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_second) and self.per_second > 0):
            raise PlanError(f"per_second must be a positive number, got {self.per_second!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise PlanError(f"burst must be a positive integer, got {self.burst!r}")


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    monthly_credits: int
    limits: Mapping[str, Limit]


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


def _limit(where: str, raw: Any) -> Limit:
    if not isinstance(raw, Mapping) or set(raw) != {"per_second", "burst"}:
        raise PlanError(f"{where} must be an object with per_second and burst")
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
            limits={c: _limit(f"plan {name!r} limits.{c}", limits[c]) for c in RATE_CLASSES},
        )
    return plans
