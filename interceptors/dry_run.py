"""Dry-run policies of routes and methods: judged as if enforced, never enforced.

A route of the route policy file, or one of meshgate's methods (the method policy file),
may have a policy in dry run. Once the policy in force has admitted a call, the dry-run
policy is judged by the steps that decide who may call what (authentication, identity,
permission, namespace) on a copy of the call, and what they would refuse is recorded on
the call (calls/dry_run.py) for the observers: the call itself goes on unchanged.

The steps that spend or guard (rate limits, credits, store availability, the audit
queue's room) are not run for a dry run: it never spends a token or a credit. A rate
limit is rolled out with the plan's or the key's own dry run (interceptors/rate_limit.py),
which draws from buckets of its own. A step that fails for a reason other than a refusal
(a store down) leaves the dry run undecided: nothing is recorded, and a warning is logged
at most once a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

from calls.dry_run import DryRunDenial, DryRunReason, DryRunRule
from calls.policy import Policy
from calls.state import CallState, PeerContext
from interceptors.steps import Step, plan_for
from storage.core.errors import MeshgateError

__all__ = ["DryRunJudge", "dry_run_reason"]

_WARN_EVERY_S = 60.0


def dry_run_reason(error: MeshgateError) -> DryRunReason | None:
    """The reason the refusal would carry if the dry-run policy were enforced: the error's
    own ErrorInfo reason (docs/api.md), when it is one a policy decides; None for anything
    else (a store down, a malformed request: no refusal of the policy)."""
    try:
        return DryRunReason(error.reason)
    except ValueError:
        return None


class DryRunJudge:
    """Judges a call that was admitted under the policy in force by a policy in dry run."""

    def __init__(self, *, steps: Sequence[Step], logger: logging.Logger | None = None) -> None:
        # the deciding steps only, in the request path's order (server/app.py)
        self._steps = tuple(steps)
        self._plans: dict[Policy, tuple[Step, ...]] = {}
        self._logger = logger or logging.getLogger("meshgate.dry_run")
        self._warned_at = -_WARN_EVERY_S

    async def judge(
        self,
        call: CallState,
        context: PeerContext,
        *,
        policy: Policy,
        rule: DryRunRule,
        name: str,
    ) -> None:
        """Run `policy`'s deciding steps on a copy of `call`; a refusal is added to the
        call's dry-run denials (`rule`, `name`, the refusal's reason), never raised."""
        shadow = dataclasses.replace(call, policy=policy, dry_run=())
        plan = self._plans.get(policy)
        if plan is None:
            plan = self._plans[policy] = plan_for(self._steps, policy)
        for step in plan:
            try:
                pending = step.check(shadow, context)
                if pending is not None:
                    await pending
            except MeshgateError as error:
                reason = dry_run_reason(error)
                if reason is None:
                    self._undecided(f"{rule} {name}", error)
                else:
                    call.dry_run += (DryRunDenial(rule, reason, name),)
                return

    def _undecided(self, what: str, error: MeshgateError) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            self._logger.warning(
                "the dry run of %s could not be decided (%s): nothing recorded",
                what,
                type(error).__name__,
            )
