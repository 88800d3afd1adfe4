"""The services this server offers, one row each: the single list everything else reads.

A row names the service's descriptor (the policy table and reflection read
it), the stores it cannot work without (its grpc.health.v1 status follows
them) and how its servicer is built from the components. Adding a service is
adding a row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from meshgate.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    document_service_pb2,
    document_service_pb2_grpc,
    health_service_pb2,
    health_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    namespace_service_pb2,
    namespace_service_pb2_grpc,
    organization_service_pb2,
    organization_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
    vector_service_pb2,
    vector_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

from server.components import Components
from services.audit_service import AuditServicer
from services.document_service import DocumentServicer
from services.health_service import HealthServicer
from services.identity_service import IdentityServicer
from services.key_service import KeyServicer
from services.namespace_service import NamespaceServicer
from services.organization_service import OrganizationServicer
from services.task_service import TaskServicer
from services.usage_service import UsageServicer
from services.vector_service import VectorServicer
from services.webhook_service import WebhookServicer
from storage.backends.health import DependencyMonitor

__all__ = [
    "SERVER_NEEDS",
    "SERVICES",
    "Probes",
    "Service",
    "add_servicers",
    "descriptors",
    "method_needs",
]

# The whole server (grpc.health.v1 service "") is NOT_SERVING without MongoDB.
SERVER_NEEDS = ("mongodb",)


@dataclass(frozen=True, slots=True)
class Probes:
    """What HealthService reads besides the components: the dependency monitor, and each
    service's status as last set (server/health.py `TrackedHealth.statuses`)."""

    monitor: DependencyMonitor
    statuses: Callable[[], Mapping[str, bool]]


@dataclass(frozen=True, slots=True)
class Service[S]:
    descriptor: ServiceDescriptor
    # the stores it cannot work without: NOT_SERVING while one is down. Redis: revocations
    # propagate through it, and costed calls need it for credits.
    needs: tuple[str, ...]
    servicer: Callable[[Components, Probes], S]
    # the generated add_<Service>Servicer_to_server
    add: Callable[[S, grpc.aio.Server], None]

    @property
    def name(self) -> str:
        return self.descriptor.full_name

    def register(self, server: grpc.aio.Server, c: Components, probes: Probes) -> None:
        self.add(self.servicer(c, probes), server)


# Not annotated, so mypy checks every row's servicer against the add function it is given to.
SERVICES = (
    Service(
        organization_service_pb2.DESCRIPTOR.services_by_name["OrganizationService"],
        needs=("mongodb",),
        servicer=lambda c, _: OrganizationServicer(organizations=c.organizations),
        add=organization_service_pb2_grpc.add_OrganizationServiceServicer_to_server,
    ),
    Service(
        key_service_pb2.DESCRIPTOR.services_by_name["KeyService"],
        needs=("mongodb", "redis"),
        servicer=lambda c, _: KeyServicer(
            keys=c.keys, namespaces=c.namespaces, invalidation=c.invalidation, events=c.events
        ),
        add=key_service_pb2_grpc.add_KeyServiceServicer_to_server,
    ),
    Service(
        namespace_service_pb2.DESCRIPTOR.services_by_name["NamespaceService"],
        needs=("mongodb", "redis", "qdrant"),
        servicer=lambda c, _: NamespaceServicer(
            namespaces=c.namespaces,
            invalidation=c.invalidation,
            purger=c.purger,
            backups=c.backups,
        ),
        add=namespace_service_pb2_grpc.add_NamespaceServiceServicer_to_server,
    ),
    Service(
        identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
        needs=("mongodb",),
        servicer=lambda c, _: IdentityServicer(organizations=c.organizations),
        add=identity_service_pb2_grpc.add_IdentityServiceServicer_to_server,
    ),
    Service(
        document_service_pb2.DESCRIPTOR.services_by_name["DocumentService"],
        needs=("mongodb", "redis"),
        servicer=lambda c, _: DocumentServicer(documents=c.documents),
        add=document_service_pb2_grpc.add_DocumentServiceServicer_to_server,
    ),
    Service(
        vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"],
        needs=("mongodb", "redis", "qdrant"),
        servicer=lambda c, _: VectorServicer(vectors=c.vectors),
        add=vector_service_pb2_grpc.add_VectorServiceServicer_to_server,
    ),
    Service(
        usage_service_pb2.DESCRIPTOR.services_by_name["UsageService"],
        needs=("mongodb", "redis"),
        servicer=lambda c, _: UsageServicer(
            usage=c.usage,
            keys=c.keys,
            accounts=c.accounts,
            organizations=c.organizations,
            grants=c.credit_events,
            plan_of=c.plan_of,
        ),
        add=usage_service_pb2_grpc.add_UsageServiceServicer_to_server,
    ),
    Service(
        audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
        needs=("mongodb",),
        servicer=lambda c, _: AuditServicer(log=c.audit, checkpoints=c.checkpoints),
        add=audit_service_pb2_grpc.add_AuditServiceServicer_to_server,
    ),
    Service(
        health_service_pb2.DESCRIPTOR.services_by_name["HealthService"],
        needs=(),
        servicer=lambda _, probes: HealthServicer(monitor=probes.monitor, services=probes.statuses),
        add=health_service_pb2_grpc.add_HealthServiceServicer_to_server,
    ),
    Service(
        task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
        needs=("mongodb", "redis"),
        servicer=lambda c, _: TaskServicer(tasks=c.tasks, on_change=c.task_due.wake),
        add=task_service_pb2_grpc.add_TaskServiceServicer_to_server,
    ),
    Service(
        webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"],
        needs=("mongodb",),
        servicer=lambda c, _: WebhookServicer(
            webhooks=c.webhooks,
            deliveries=c.deliveries,
            queue=c.queue,
            sender=c.sender,
            on_retry=c.delivery_due.wake,
        ),
        add=webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server,
    ),
)


def descriptors() -> tuple[ServiceDescriptor, ...]:
    return tuple(s.descriptor for s in SERVICES)


def method_needs() -> dict[str, tuple[str, ...]]:
    """Every method (`/package.Service/Method`) -> the stores its service needs."""
    return {
        f"/{s.name}/{method.name}": s.needs for s in SERVICES for method in s.descriptor.methods
    }


def add_servicers(server: grpc.aio.Server, c: Components, probes: Probes) -> None:
    for service in SERVICES:
        service.register(server, c, probes)
