"""Step 5, identity: the key's organization_id resolves to its hidden internal_id (cached)."""

from __future__ import annotations

import grpc

from interceptors.context import CallState, Principal
from storage.errors import NotFoundError, UnauthenticatedError
from storage.organizations import OrganizationStore

__all__ = ["OrganizationIdentity"]


class OrganizationIdentity:
    def __init__(self, *, organizations: OrganizationStore) -> None:
        self._organizations = organizations

    async def check(
        self, call: CallState, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        if call.key is None:
            return
        try:
            organization = await self._organizations.get(call.key.organization_id)
        except NotFoundError:  # a key whose organization is gone is no key at all
            raise UnauthenticatedError() from None
        call.principal = Principal(key=call.key, organization=organization)
