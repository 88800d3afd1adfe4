"""Availability, between peer (3) and authentication (4): fail fast while a store is down.

Which stores a method needs comes from its service's row in the registry
(server/registry.py `needs`, the same list its grpc.health.v1 status follows);
the breakers (storage/backends/breaker.py) say which are down right now. A call
that needs a store whose breaker is open is refused at once, UNAVAILABLE with
`google.rpc.RetryInfo` and `retry-after` (when the next probe runs), instead of
waiting for the driver's timeouts; it runs before any step that can do I/O
(authentication may read keys from MongoDB). While a breaker checks a hint
(the store may be down: a probe is on its way), the call waits for the probe's
answer, at most the backend timeout, and then goes on or is refused. The check
is two attribute reads per store the method needs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence

from calls.state import CallState, PeerContext
from storage.backends.breaker import StoreBreaker
from storage.core.errors import UnavailableError

__all__ = ["StoreAvailability"]


class StoreAvailability:
    def __init__(self, *, needs: Mapping[str, Sequence[StoreBreaker]]) -> None:
        # method -> the breakers of the stores it needs (methods needing none are absent)
        self._needs = {method: tuple(b) for method, b in needs.items() if b}

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None:
        breakers = self._needs.get(call.method)
        if breakers is None:
            return None
        for breaker in breakers:
            if not breaker.closed:
                raise _refusal(breaker)
            if breaker.in_doubt:
                return _when_settled(breakers)
        return None


def _refusal(breaker: StoreBreaker) -> UnavailableError:
    delay = breaker.retry_after_s()
    return UnavailableError(
        f"a backing store this method needs is unavailable; retry in {delay:.2f}s",
        retry_after_s=delay,
    )


async def _when_settled(breakers: Sequence[StoreBreaker]) -> None:
    """A store is in doubt (a hint is being checked): wait for the answer, then decide."""
    for breaker in breakers:
        await breaker.settled()
    for breaker in breakers:
        if not breaker.closed:
            raise _refusal(breaker)
