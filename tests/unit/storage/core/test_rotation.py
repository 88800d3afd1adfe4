"""The secret-rotation-with-grace rule shared by API keys and webhook secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage.core.errors import InvalidArgumentError
from storage.core.rotation import check_grace, in_force, retire_previous

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _retire(
    deadlines: list[datetime | None], grace: timedelta
) -> tuple[list[tuple[int, datetime]], datetime]:
    return retire_previous(
        list(enumerate(deadlines)),
        now=NOW,
        grace=grace,
        deadline_of=lambda s: s[1],
        with_deadline=lambda s, until: (s[0], until),
    )


def test_previous_secrets_stop_at_now_plus_grace() -> None:
    kept, cutoff = _retire([None, NOW + 5 * HOUR], grace=2 * HOUR)
    assert cutoff == NOW + 2 * HOUR
    assert kept == [(0, cutoff), (1, cutoff)]


def test_an_earlier_deadline_is_kept_and_a_passed_one_dropped() -> None:
    kept, _ = _retire([NOW + HOUR, NOW, NOW - HOUR], grace=2 * HOUR)
    assert kept == [(0, NOW + HOUR)]


def test_zero_grace_drops_every_previous_secret() -> None:
    kept, cutoff = _retire([None, NOW + HOUR], grace=timedelta(0))
    assert kept == [] and cutoff == NOW


@pytest.mark.parametrize("grace", [timedelta(seconds=-1), timedelta(days=7, seconds=1)])
def test_grace_outside_the_bounds_is_refused(grace: timedelta) -> None:
    with pytest.raises(InvalidArgumentError, match="between 0 and 7 days"):
        check_grace(grace, maximum=timedelta(days=7))


def test_bounds_are_inclusive() -> None:
    check_grace(timedelta(0), maximum=timedelta(days=30))
    check_grace(timedelta(days=30), maximum=timedelta(days=30))


def test_in_force() -> None:
    assert in_force(None, NOW)
    assert in_force(NOW + HOUR, NOW)
    assert not in_force(NOW, NOW)
