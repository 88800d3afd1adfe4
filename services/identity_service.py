"""IdentityService (internal only): organization_id -> internal_id for allow-listed mTLS peers."""

from __future__ import annotations

from typing import Any

from meshgate.v1 import identity_service_pb2 as pb
from meshgate.v1 import identity_service_pb2_grpc as pb_grpc

from services.convert import checked_organization_id
from storage.tenancy.organizations import OrganizationStore

__all__ = ["IdentityServicer"]


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, *, organizations: OrganizationStore) -> None:
        self._organizations = organizations

    async def ResolveOrganization(
        self, request: pb.ResolveOrganizationRequest, context: Any
    ) -> pb.ResolveOrganizationResponse:
        checked_organization_id(request.organization_id)
        organization = await self._organizations.get(request.organization_id)
        return pb.ResolveOrganizationResponse(
            organization_id=organization.organization_id, internal_id=organization.internal_id
        )
