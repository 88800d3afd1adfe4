"""Building and running the server: stores, the interceptor chain, servicers, health, reflection.

`create_server` is kept apart from the command line (`server/cli.py`) so
tests start real servers on `localhost:0` with the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from meshgate.v1 import (
    document_service_pb2,
    document_service_pb2_grpc,
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
    vector_service_pb2,
    vector_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

from interceptors.authentication import Authentication
from interceptors.authorization import Authorization
from interceptors.chain import MAX_METADATA_BYTES, SecurityChain
from interceptors.errors import ErrorMapper
from interceptors.identity import OrganizationIdentity
from interceptors.namespace import NamespaceScope
from interceptors.peer import PeerIdentity
from interceptors.telemetry import Telemetry
from server.backends import Backends
from server.policies import build_policy_table, undeclared_methods
from server.reflection import enable_reflection
from server.settings import Settings
from server.tls import ReloadingServerCredentials
from services.document_service import DocumentServicer
from services.identity_service import IdentityServicer
from services.key_service import KeyServicer
from services.namespace_service import NamespaceServicer
from services.organization_service import OrganizationServicer
from services.task_service import TaskServicer
from services.vector_service import VectorServicer
from services.webhook_service import WebhookServicer
from storage.cascade import NamespacePurger
from storage.documents import DocumentStore
from storage.invalidation import InvalidationBus
from storage.key_verifier import KeyVerifier
from storage.keys import KeyStore
from storage.namespaces import NamespaceStore
from storage.organizations import OrganizationStore
from storage.outbox import EventOutbox
from storage.sealing import SecretBox
from storage.tasks import TaskStore
from storage.vectors import VectorStore
from storage.webhook_http import WebhookSender
from storage.webhook_targets import TargetPolicy
from storage.webhooks import DeliveryStore, WebhookStore
from storage.work_queue import WorkQueue
from workers.dispatcher import DeliveryWorker, RetrySchedule
from workers.metrics import WorkMetrics
from workers.runner import QueueRunner
from workers.tasks import TaskWorker

__all__ = ["SERVICE_DESCRIPTORS", "RunningServer", "create_server"]

_LOG = logging.getLogger("meshgate.server")

SERVICE_DESCRIPTORS = (
    organization_service_pb2.DESCRIPTOR.services_by_name["OrganizationService"],
    key_service_pb2.DESCRIPTOR.services_by_name["KeyService"],
    namespace_service_pb2.DESCRIPTOR.services_by_name["NamespaceService"],
    identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    document_service_pb2.DESCRIPTOR.services_by_name["DocumentService"],
    vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"],
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
    webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"],
)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    invalidation: InvalidationBus
    verifier: KeyVerifier
    namespaces: NamespaceStore
    tls: ReloadingServerCredentials | None
    # counters of the background work (tasks, deliveries) for the observability change
    work_metrics: WorkMetrics = field(default_factory=WorkMetrics)
    runners: dict[str, QueueRunner] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace_s: float) -> None:
        """Drain: health turns NOT_SERVING, new calls are refused, in-flight ones finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.verifier.flush_last_used()


async def _flush_last_used(verifier: KeyVerifier, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await verifier.flush_last_used()
        except Exception as exc:  # a store hiccup must not kill the loop
            _LOG.warning("could not record key last-used times: %s", type(exc).__name__)


async def _finish_deletions(purger: NamespacePurger, every_s: float) -> None:
    """Deletions a crash interrupted are completed at start-up and then periodically."""
    while True:
        try:
            await purger.finish_pending()
        except Exception as exc:
            _LOG.warning("could not finish pending namespace deletions: %s", type(exc).__name__)
        await asyncio.sleep(every_s)


@dataclass
class _Background:
    """The stores and runners of ingestion tasks and webhook delivery."""

    tasks: TaskStore
    webhooks: WebhookStore
    deliveries: DeliveryStore
    queue: WorkQueue
    sender: WebhookSender
    metrics: WorkMetrics
    runners: dict[str, QueueRunner]


def _background(
    settings: Settings, backends: Backends, *, documents: DocumentStore, vectors: VectorStore
) -> _Background:
    queue = WorkQueue(mongo=backends.mongo)
    box = SecretBox(settings.webhook_sealing_key())
    if not box.encrypts:
        _LOG.warning(
            "webhook signing secrets are stored unencrypted; set MESHGATE_WEBHOOK_SECRET_KEY"
        )
    if sum(settings.webhook_retry_schedule) < 24 * 3600:
        _LOG.warning("the webhook retry schedule spans less than a day")
    webhooks = WebhookStore(mongo=backends.mongo, box=box)
    deliveries = DeliveryStore(mongo=backends.mongo)
    outbox = EventOutbox(
        mongo=backends.mongo, queue=queue, webhooks=webhooks, deliveries=deliveries
    )
    tasks = TaskStore(mongo=backends.mongo, queue=queue)
    ssl_context = ssl.create_default_context(
        cafile=str(settings.webhook_ca_file) if settings.webhook_ca_file else None
    )
    sender = WebhookSender(
        policy=TargetPolicy.from_entries(settings.webhook_allowed_hosts),
        timeout_s=settings.webhook_timeout_s,
        max_response_bytes=settings.webhook_max_response_bytes,
        ssl_context=ssl_context,
    )
    metrics = WorkMetrics(queue_depth=queue.depth)
    task_lease = timedelta(seconds=settings.task_lease_s)
    task_worker = TaskWorker(
        tasks=tasks,
        queue=queue,
        documents=documents,
        vectors=vectors,
        outbox=outbox,
        metrics=metrics,
        lease=task_lease,
        max_attempts=settings.task_max_attempts,
        logger=logging.getLogger("meshgate.tasks"),
    )
    delivery_worker = DeliveryWorker(
        queue=queue,
        deliveries=deliveries,
        webhooks=webhooks,
        outbox=outbox,
        sender=sender,
        schedule=RetrySchedule(settings.webhook_retry_schedule, settings.webhook_jitter),
        metrics=metrics,
        logger=logging.getLogger("meshgate.webhooks"),
    )
    runners = {
        "task": QueueRunner(
            kind="task",
            queue=queue,
            handle=task_worker.handle,
            concurrency=settings.task_workers,
            lease=task_lease,
            poll_s=settings.work_poll_s,
            logger=logging.getLogger("meshgate.tasks"),
        ),
        "delivery": QueueRunner(
            kind="delivery",
            queue=queue,
            handle=delivery_worker.handle,
            concurrency=settings.webhook_workers,
            # one attempt is bounded by the request timeout; the rest is store writes
            lease=timedelta(seconds=2 * settings.webhook_timeout_s + 1),
            poll_s=settings.work_poll_s,
            logger=logging.getLogger("meshgate.webhooks"),
        ),
        "event": QueueRunner(
            kind="event",
            queue=queue,
            handle=outbox.recover,
            concurrency=1 if settings.webhook_workers else 0,
            lease=timedelta(seconds=30),
            poll_s=max(settings.work_poll_s, 5.0),
            logger=logging.getLogger("meshgate.webhooks"),
        ),
    }
    outbox.on_delivery = runners["delivery"].wake
    return _Background(
        tasks=tasks,
        webhooks=webhooks,
        deliveries=deliveries,
        queue=queue,
        sender=sender,
        metrics=metrics,
        runners=runners,
    )


async def create_server(
    settings: Settings,
    backends: Backends,
    *,
    address: str | None = None,
    extra_options: Sequence[tuple[str, int]] = (),
) -> RunningServer:
    organizations = OrganizationStore(mongo=backends.mongo)
    keys = KeyStore(mongo=backends.mongo)
    namespaces = NamespaceStore(mongo=backends.mongo)
    verifier = KeyVerifier(
        keys=keys, accepted_environments=settings.environments, ttl_s=settings.key_cache_ttl_s
    )

    documents = DocumentStore(mongo=backends.mongo)
    vectors = VectorStore(
        mongo=backends.mongo, qdrant=backends.qdrant, payload_index=backends.qdrant_remote
    )
    purger = NamespacePurger(
        mongo=backends.mongo, redis=backends.redis, vectors=vectors, namespaces=namespaces
    )
    background = _background(settings, backends, documents=documents, vectors=vectors)

    def on_live(live: bool) -> None:
        verifier.forget_all()
        namespaces.forget_all()
        verifier.cache_enabled = live

    def on_namespace(namespace_id: str) -> None:
        namespaces.forget(namespace_id)
        vectors.forget(namespace_id)

    invalidation = InvalidationBus(
        redis=backends.redis,
        on_key=verifier.forget_key,
        on_namespace=on_namespace,
        on_live=on_live,
    )

    policies = build_policy_table(SERVICE_DESCRIPTORS)
    for method in undeclared_methods(SERVICE_DESCRIPTORS, policies):
        _LOG.warning("method %s declares no policy and will refuse every call", method)
    chain = SecurityChain(
        policies=policies,
        telemetry=Telemetry(access_log=logging.getLogger("meshgate.access")),
        errors=ErrorMapper(logger=logging.getLogger("meshgate.errors")),
        steps=(
            PeerIdentity(trusted_proxies=settings.trusted_proxies),
            Authentication(verifier=verifier),
            OrganizationIdentity(organizations=organizations),
            Authorization(internal_peers=settings.internal_peers),
            NamespaceScope(namespaces=namespaces),
        ),
        logger=_LOG,
    )
    server = grpc.aio.server(
        interceptors=(chain,),
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # the transport's ceiling; above MAX_METADATA_BYTES the chain refuses clearly
            ("grpc.max_metadata_size", 8 * MAX_METADATA_BYTES),
            *extra_options,
        ],
    )
    organization_service_pb2_grpc.add_OrganizationServiceServicer_to_server(
        OrganizationServicer(), server
    )
    key_service_pb2_grpc.add_KeyServiceServicer_to_server(
        KeyServicer(keys=keys, namespaces=namespaces, invalidation=invalidation), server
    )
    namespace_service_pb2_grpc.add_NamespaceServiceServicer_to_server(
        NamespaceServicer(namespaces=namespaces, invalidation=invalidation, purger=purger), server
    )
    document_service_pb2_grpc.add_DocumentServiceServicer_to_server(
        DocumentServicer(documents=documents), server
    )
    vector_service_pb2_grpc.add_VectorServiceServicer_to_server(
        VectorServicer(vectors=vectors), server
    )
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
        IdentityServicer(organizations=organizations), server
    )
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(
        TaskServicer(tasks=background.tasks, on_change=background.runners["task"].wake), server
    )
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(
            webhooks=background.webhooks,
            deliveries=background.deliveries,
            queue=background.queue,
            sender=background.sender,
            on_retry=background.runners["delivery"].wake,
        ),
        server,
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [d.full_name for d in SERVICE_DESCRIPTORS]
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection((*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)

    tls: ReloadingServerCredentials | None = None
    bind = address or settings.listen
    if settings.insecure:
        _LOG.warning("serving WITHOUT TLS (--insecure): for local debugging only")
        port = server.add_insecure_port(bind)
    else:
        tls = ReloadingServerCredentials(
            cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca
        )
        port = server.add_secure_port(bind, tls.credentials())
    if port == 0:
        raise OSError(f"could not bind {bind}")
    await server.start()
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        invalidation=invalidation,
        verifier=verifier,
        namespaces=namespaces,
        tls=tls,
        work_metrics=background.metrics,
        runners=background.runners,
    )
    running.tasks.append(asyncio.create_task(invalidation.run(), name="invalidation-bus"))
    running.tasks.append(asyncio.create_task(_flush_last_used(verifier, 30.0), name="last-used"))
    running.tasks.append(
        asyncio.create_task(_finish_deletions(purger, 60.0), name="namespace-deletions")
    )
    for kind, runner in background.runners.items():
        running.tasks.append(asyncio.create_task(runner.run(), name=f"{kind}-runner"))
    await invalidation.wait_live(2.0)
    return running
