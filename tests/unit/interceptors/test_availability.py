"""Availability, in-process: a call needing a store whose breaker is open fails fast."""

from __future__ import annotations

import pytest

from calls.policy import Access, Policy
from interceptors.availability import StoreAvailability
from storage.backends.breaker import StoreBreaker
from storage.core.errors import UnavailableError
from tests.support.request_path import Context, call_state

READ = Policy(access=Access.API_KEY, permission="read")


async def never_answers() -> None:
    raise ConnectionError("down")


async def test_only_calls_needing_the_open_breakers_store_are_refused() -> None:
    mongodb = StoreBreaker(name="mongodb", probe=never_answers, probe_every_s=5.0)
    step = StoreAvailability(needs={"/s.S/NeedsMongo": (mongodb,), "/s.S/NeedsNothing": ()})
    needing = call_state(READ, method="/s.S/NeedsMongo")
    step.check(needing, Context())  # closed: admitted
    mongodb.trip("AutoReconnect")
    try:
        with pytest.raises(UnavailableError, match="unavailable; retry in") as refused:
            step.check(call_state(READ, method="/s.S/NeedsMongo"), Context())
        assert (
            refused.value.retry_after_s is not None and 0.05 <= refused.value.retry_after_s <= 5.0
        )
        step.check(call_state(READ, method="/s.S/NeedsNothing"), Context())
        step.check(call_state(READ, method="/s.S/Unknown"), Context())
    finally:
        await mongodb.close()
