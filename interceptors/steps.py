"""What the request path is made of: steps, which admit or refuse a call, and observers,
which see it finish; and which of them apply to a method (its plan).

The chain (interceptors/chain.py) runs them for meshgate's own methods, the ext_authz
decider (interceptors/sidecar/check.py) for a sidecar's question, the dry-run judge
(interceptors/dry_run.py) for a policy in dry run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from calls.policy import Policy
from calls.state import CallState, PeerContext

__all__ = ["Observer", "Step", "plan_for"]


class Step(Protocol):
    """Admits or refuses a call before the servicer runs (raise a typed error to refuse).

    Returns None when decided, or an awaitable that finishes the check (I/O needed).
    A step may also say which methods it applies to (`applies(policy)`, read once per
    method); one without `applies` runs on every call.
    """

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None: ...


class Observer(Protocol):
    """Sees every finished call, admitted or not: access log, usage analytics, audit.

    Like a step, it may say which methods it sees (`observes(policy)`, read once per
    method); one without `observes` sees every call.
    """

    def finish(self, call: CallState, duration_s: float) -> None: ...


def plan_for[T](parts: Iterable[T], policy: Policy, *, test: str = "applies") -> tuple[T, ...]:
    """The steps (or, with test="observes", the observers) for a method of this policy, in
    their order: those without the test, and those whose test accepts the policy."""
    planned = []
    for part in parts:
        accepts: Callable[[Policy], bool] | None = getattr(part, test, None)
        if accepts is None or accepts(policy):
            planned.append(part)
    return tuple(planned)
