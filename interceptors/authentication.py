"""Step 4, authentication: `authorization: Bearer <key>` on every API-key method.

Missing, malformed, unknown, revoked, expired, rotated-out and
wrong-environment keys all get the same UNAUTHENTICATED message: no oracle.
"""

from __future__ import annotations

from collections.abc import Awaitable

from interceptors.context import CallState, PeerContext
from interceptors.policy import Access
from storage.core.errors import UnauthenticatedError
from storage.tenancy.key_verifier import KeyVerifier

__all__ = ["Authentication"]

_MAX_HEADER = 128


class Authentication:
    def __init__(self, *, verifier: KeyVerifier) -> None:
        self._verifier = verifier

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None:
        if call.policy.access is not Access.API_KEY:
            return None
        header = call.metadata.get("authorization")
        if header is None or len(header) > _MAX_HEADER:
            raise UnauthenticatedError()
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise UnauthenticatedError()
        secret = secret.strip()
        call.key = self._verifier.cached(secret)
        return None if call.key is not None else self._verify(call, secret)

    async def _verify(self, call: CallState, secret: str) -> None:
        call.key = await self._verifier.verify(secret)
