"""Plans: a class's limit in dry run beside the one in force, validated like it."""

from __future__ import annotations

from typing import Any

import pytest

from storage.core.plans import Limit, PlanError, parse_plans

ROOMY = {"per_second": 10, "burst": 20}


def plan(admin: dict[str, Any]) -> dict[str, Any]:
    limits = {"metadata": ROOMY, "data": ROOMY, "search": ROOMY, "admin": admin}
    return {"p": {"monthly_credits": 1, "limits": limits}}


def test_a_class_may_carry_a_limit_in_dry_run_beside_the_one_in_force() -> None:
    (parsed,) = parse_plans(plan({**ROOMY, "dry_run": {"per_second": 1, "burst": 2}})).values()
    assert parsed.limits["admin"] == Limit(per_second=10, burst=20)
    assert parsed.dry_run_limits == {"admin": Limit(per_second=1, burst=2)}
    assert parse_plans(plan(ROOMY))["p"].dry_run_limits == {}


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        (
            {**ROOMY, "dry_run": {"per_second": 0, "burst": 2}},
            "plan 'p' limits.admin.dry_run: per_second must be between",
        ),
        (
            {**ROOMY, "dry_run": {**ROOMY, "dry_run": ROOMY}},
            "plan 'p' limits.admin.dry_run must be an object with per_second and burst",
        ),
        ({"dry_run": ROOMY}, "plan 'p' limits.admin must be an object with per_second and burst"),
    ],
)
def test_a_limit_in_dry_run_is_bounded_like_any_other(admin: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        parse_plans(plan(admin))
