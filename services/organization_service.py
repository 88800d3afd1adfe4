"""OrganizationService: the caller's own organization (public fields only) and its
idle-key policy."""

from __future__ import annotations

from typing import Any

from meshgate.v1 import organization_service_pb2 as pb
from meshgate.v1 import organization_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import environment_to_proto, timestamp
from storage.core.errors import PermissionDeniedError, Reason
from storage.tenancy.organizations import KeyIdlePolicy, Organization, OrganizationStore

__all__ = ["OrganizationServicer", "organization_to_proto"]


def organization_to_proto(organization: Organization) -> pb.Organization:
    return pb.Organization(
        organization_id=organization.organization_id,
        name=organization.name,
        plan=organization.plan,
        create_time=timestamp(organization.created_at),
    )


def policy_to_proto(policy: KeyIdlePolicy) -> pb.KeyIdlePolicy:
    return pb.KeyIdlePolicy(
        environment=environment_to_proto(policy.environment),
        idle_days=policy.idle_days,
        notice_days=policy.notice_days,
    )


class OrganizationServicer(pb_grpc.OrganizationServiceServicer):
    def __init__(self, *, organizations: OrganizationStore) -> None:
        self._organizations = organizations

    async def GetOrganization(
        self, request: pb.GetOrganizationRequest, context: Any
    ) -> pb.GetOrganizationResponse:
        principal = current_call.get().require_principal()
        return pb.GetOrganizationResponse(
            organization=organization_to_proto(principal.organization)
        )

    async def GetKeyIdlePolicy(
        self, request: pb.GetKeyIdlePolicyRequest, context: Any
    ) -> pb.GetKeyIdlePolicyResponse:
        principal = current_call.get().require_principal()
        policy = await self._organizations.key_idle_policy(
            principal.organization.organization_id, principal.key.environment
        )
        return pb.GetKeyIdlePolicyResponse(policy=policy_to_proto(policy))

    async def SetKeyIdlePolicy(
        self, request: pb.SetKeyIdlePolicyRequest, context: Any
    ) -> pb.SetKeyIdlePolicyResponse:
        """The policy of the caller's environment only, and only from a key that reaches
        every key of it (no namespace allow-list, no workload binding): the policy can
        disable any key of the environment."""
        call = current_call.get()
        principal = call.require_principal()
        if principal.key.namespace_ids or principal.key.binding is not None:
            raise PermissionDeniedError(
                "the idle-key policy can only be set with a key without a namespace"
                " allow-list or a workload binding",
                reason=Reason.KEY_SCOPE_INSUFFICIENT,
            )
        policy = KeyIdlePolicy(
            environment=principal.key.environment,
            idle_days=request.policy.idle_days,
            notice_days=request.policy.notice_days,
        )
        organization_id = principal.organization.organization_id
        await self._organizations.set_key_idle_policy(organization_id, policy)
        call.resource = organization_id
        return pb.SetKeyIdlePolicyResponse(policy=policy_to_proto(policy))
