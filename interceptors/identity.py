"""Step 5, identity: the key's organization_id resolves to its hidden internal_id (cached)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext, Principal
from storage.core.errors import NotFoundError, UnauthenticatedError
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.organizations import Organization

__all__ = ["OrganizationIdentity", "Organizations"]


class Organizations(Protocol):
    """What the step reads: `OrganizationStore`, or an in-memory one (tests/support/fakes)."""

    def cached(self, organization_id: str) -> Organization | None: ...

    async def get(self, organization_id: str) -> Organization: ...


class OrganizationIdentity:
    def __init__(self, *, organizations: Organizations) -> None:
        self._organizations = organizations

    @staticmethod
    def applies(policy: Policy) -> bool:
        return policy.access is Access.API_KEY  # the methods with a key to resolve

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None:
        key = call.key
        if key is None:
            return None
        organization = self._organizations.cached(key.organization_id)
        if organization is None:
            return self._resolve(call, key)
        call.principal = Principal(key=key, organization=organization)
        return None

    async def _resolve(self, call: CallState, key: VerifiedKey) -> None:
        try:
            organization = await self._organizations.get(key.organization_id)
        except NotFoundError:  # a key whose organization is gone is no key at all
            raise UnauthenticatedError() from None
        call.principal = Principal(key=key, organization=organization)
