"""OrganizationService: the caller's own organization, public fields only."""

from __future__ import annotations

from typing import Any

from meshgate.v1 import organization_service_pb2 as pb
from meshgate.v1 import organization_service_pb2_grpc as pb_grpc

from interceptors.context import current_call
from services.convert import timestamp
from storage.tenancy.organizations import Organization

__all__ = ["OrganizationServicer", "organization_to_proto"]


def organization_to_proto(organization: Organization) -> pb.Organization:
    return pb.Organization(
        organization_id=organization.organization_id,
        name=organization.name,
        plan=organization.plan,
        create_time=timestamp(organization.created_at),
    )


class OrganizationServicer(pb_grpc.OrganizationServiceServicer):
    async def GetOrganization(
        self, request: pb.GetOrganizationRequest, context: Any
    ) -> pb.GetOrganizationResponse:
        principal = current_call.get().require_principal()
        return pb.GetOrganizationResponse(
            organization=organization_to_proto(principal.organization)
        )
