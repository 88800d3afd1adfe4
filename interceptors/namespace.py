"""Step 7, namespace: `x-namespace` (id or name) resolved inside the caller's organization.

Required on every namespaced method. Unknown namespaces, other
organizations' and other environments' namespaces are all NOT_FOUND; a
namespace of the caller's own organization outside the key's allow-list is
PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from calls.policy import Policy
from calls.state import CallState, PeerContext, Principal
from storage.core.errors import InvalidArgumentError, PermissionDeniedError, Reason
from storage.tenancy.namespaces import Namespace

__all__ = ["NAMESPACE_HEADER", "NamespaceScope", "Namespaces"]

NAMESPACE_HEADER = "x-namespace"


class Namespaces(Protocol):
    """What the step reads: `NamespaceStore`, or an in-memory one (tests/support/fakes)."""

    def cached(self, *, internal_id: str, environment: str, reference: str) -> Namespace | None: ...

    async def resolve(self, *, internal_id: str, environment: str, reference: str) -> Namespace: ...


class NamespaceScope:
    def __init__(self, *, namespaces: Namespaces) -> None:
        self._namespaces = namespaces

    @staticmethod
    def applies(policy: Policy) -> bool:
        return policy.namespaced

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None:
        principal = call.require_principal()
        reference = call.metadata.get(NAMESPACE_HEADER, "").strip()
        if not reference:
            raise InvalidArgumentError(
                f"this method acts in a namespace: send the {NAMESPACE_HEADER} header (id or name)",
                reason=Reason.NAMESPACE_MISSING,
                metadata={"header": NAMESPACE_HEADER},
            )
        namespace = self._namespaces.cached(
            internal_id=principal.organization.internal_id,
            environment=principal.key.environment,
            reference=reference,
        )
        if namespace is None:
            return self._resolve(call, principal, reference)
        self._admit(call, principal, namespace)
        return None

    async def _resolve(self, call: CallState, principal: Principal, reference: str) -> None:
        namespace = await self._namespaces.resolve(
            internal_id=principal.organization.internal_id,
            environment=principal.key.environment,
            reference=reference,
        )
        self._admit(call, principal, namespace)

    @staticmethod
    def _admit(call: CallState, principal: Principal, namespace: Namespace) -> None:
        allowed = principal.key.namespace_ids
        if allowed and namespace.namespace_id not in allowed:
            raise PermissionDeniedError(
                "this key may not act in that namespace", reason=Reason.NAMESPACE_NOT_ALLOWED
            )
        call.namespace = namespace
