"""Step 4, authentication: `authorization: Bearer <key>` on every API-key method.

Missing, malformed, unknown, revoked, expired, rotated-out and
wrong-environment keys all get the same UNAUTHENTICATED message: no oracle.
"""

from __future__ import annotations

import grpc

from interceptors.context import CallState
from interceptors.policy import Access
from storage.errors import UnauthenticatedError
from storage.key_verifier import KeyVerifier

__all__ = ["Authentication"]

_MAX_HEADER = 128


class Authentication:
    def __init__(self, *, verifier: KeyVerifier) -> None:
        self._verifier = verifier

    async def check(
        self, call: CallState, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        if call.policy.access is not Access.API_KEY:
            return
        header = call.metadata.get("authorization")
        if header is None or len(header) > _MAX_HEADER:
            raise UnauthenticatedError()
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise UnauthenticatedError()
        call.key = await self._verifier.verify(secret.strip())
