"""Rotating a secret with a grace period: one rule for API keys and webhook secrets.

A rotation adds a new secret. The previous ones keep working until
`now + grace`: a grace of zero stops them at once (they are dropped), a
previous secret whose own deadline is earlier keeps it, and one whose deadline
has passed is dropped. Each kind of secret sets its own longest grace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from storage.core.errors import InvalidArgumentError

__all__ = ["check_grace", "in_force", "retire_previous"]


def check_grace(grace: timedelta, *, maximum: timedelta) -> None:
    """INVALID_ARGUMENT unless 0 <= grace <= maximum (a whole number of days)."""
    if grace < timedelta(0) or grace > maximum:
        raise InvalidArgumentError(
            f"grace_period must be between 0 and {maximum.days} days", field="grace_period"
        )


def in_force(not_after: datetime | None, now: datetime) -> bool:
    """Whether a secret with this deadline (None: none yet) still works at `now`."""
    return not_after is None or not_after > now


def retire_previous[S, R](
    previous: Iterable[S],
    *,
    now: datetime,
    grace: timedelta,
    deadline_of: Callable[[S], datetime | None],
    with_deadline: Callable[[S, datetime], R],
) -> tuple[list[R], datetime]:
    """The previous secrets that keep working after a rotation, each with its deadline
    (`with_deadline`), and the cutoff `now + grace` they all stop by."""
    cutoff = now + grace
    if grace <= timedelta(0):
        return [], cutoff
    kept = []
    for secret in previous:
        deadline = deadline_of(secret)
        if in_force(deadline, now):
            until = cutoff if deadline is None else min(deadline, cutoff)
            kept.append(with_deadline(secret, until))
    return kept, cutoff
