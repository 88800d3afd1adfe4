"""Step 5, identity: the key's organization_id resolves to its hidden internal_id (cached)."""

from __future__ import annotations

from collections.abc import Awaitable

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext, Principal
from storage.core.errors import NotFoundError, UnauthenticatedError
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.organizations import OrganizationStore

__all__ = ["OrganizationIdentity"]


class OrganizationIdentity:
    def __init__(self, *, organizations: OrganizationStore) -> None:
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
