"""Step 4, authentication: `authorization: Bearer <key>` on every API-key method.

Missing, malformed, unknown, revoked, expired, disabled, rotated-out and
wrong-environment keys all get the same UNAUTHENTICATED message: no oracle.
So does a key bound to workloads (storage/core/peer_bindings.py) presented by
any other peer; only such a key makes the call resolve its peer identity, and
the refusal keeps the key (`CallState.refused_key`) for the audit trail.
"""

from __future__ import annotations

from collections.abc import Awaitable

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext
from storage.core.errors import UnauthenticatedError
from storage.tenancy.key_verifier import KeyVerifier, VerifiedKey

__all__ = ["Authentication"]

_MAX_HEADER = 128


class Authentication:
    def __init__(self, *, verifier: KeyVerifier) -> None:
        self._verifier = verifier

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
        key = self._verifier.cached(secret)
        if key is None:
            return self._verify(call, secret)
        self._admit(call, key)
        return None

    async def _verify(self, call: CallState, secret: str) -> None:
        self._admit(call, await self._verifier.verify(secret))

    def _admit(self, call: CallState, key: VerifiedKey) -> None:
        if key.binding is not None and not key.binding.admits(call.peer_identity):
            call.refused_key = key
            raise UnauthenticatedError()
        self._verifier.used(key)
        call.key = key
