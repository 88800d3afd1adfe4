"""Step 4, authentication: `authorization: Bearer <key>` on every API-key method.

Missing, malformed, unknown, revoked, expired, disabled, rotated-out and
wrong-environment keys all get the same UNAUTHENTICATED message: no oracle.
So does a key bound to workloads (storage/core/peer_bindings.py) presented by
any other peer; only such a key makes the call resolve its peer identity, and
the refusal keeps the key (`CallState.refused_key`) for the audit trail. A stored
key that may no longer be used (revoked, expired, disabled, rotated out) is kept
too (`CallState.unusable_key`), so usage analytics counts the refusal in that key's
organization; an unknown or malformed key belongs to no organization.

The step's own latency is a histogram by `cache` (hit: the key came from this
process's cache; miss: it was looked up in the store, or refused as malformed
before any lookup), so a cold cache or a slow key store shows apart from the call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext
from interceptors.metrics import Metrics
from storage.core.errors import UnauthenticatedError
from storage.tenancy.key_verifier import KeyVerifier, UnusableKeyError, VerifiedKey

__all__ = ["Authentication"]

_MAX_HEADER = 128


class Authentication:
    def __init__(self, *, verifier: KeyVerifier, metrics: Metrics | None = None) -> None:
        self._verifier = verifier
        # the histogram's two children, bound once (None: no metrics)
        self._hit = metrics.authentication_duration["hit"] if metrics else None
        self._miss = metrics.authentication_duration["miss"] if metrics else None

    @staticmethod
    def applies(policy: Policy) -> bool:
        return policy.access is Access.API_KEY

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None:
        header = call.metadata.get("authorization")
        if header is None or len(header) > _MAX_HEADER:
            raise UnauthenticatedError()
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise UnauthenticatedError()
        secret = secret.strip()
        started = time.perf_counter()
        key = self._verifier.cached(secret)
        if key is None:
            return self._verify(call, secret, started)
        try:
            self._admit(call, key)
        finally:
            if self._hit is not None:
                self._hit.observe(time.perf_counter() - started)
        return None

    async def _verify(self, call: CallState, secret: str, started: float) -> None:
        try:
            self._admit(call, await self._verifier.verify(secret))
        except UnusableKeyError as exc:
            call.unusable_key = exc.owner
            raise
        finally:
            if self._miss is not None:
                self._miss.observe(time.perf_counter() - started)

    def _admit(self, call: CallState, key: VerifiedKey) -> None:
        if key.binding is not None and not key.binding.admits(call.peer_identity):
            call.refused_key = key
            raise UnauthenticatedError()
        self._verifier.used(key)
        call.key = key
