"""Building and running the server: stores, the interceptor chain, servicers, health, reflection.

`create_server` is kept apart from the command line (`server/cli.py`) so
tests start real servers on `localhost:0` with the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
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
from opentelemetry import trace

from interceptors.audit import AuditTrail
from interceptors.authentication import Authentication
from interceptors.authorization import Authorization
from interceptors.chain import MAX_METADATA_BYTES, SecurityChain
from interceptors.credits import Credits
from interceptors.errors import ErrorMapper
from interceptors.identity import OrganizationIdentity
from interceptors.metrics import Metrics
from interceptors.namespace import NamespaceScope
from interceptors.peer import PeerIdentity
from interceptors.rate_limit import RateLimit
from interceptors.telemetry import Telemetry
from interceptors.usage import UsageObserver
from server.backends import Backends
from server.observability import serve_metrics
from server.policies import build_policy_table, undeclared_methods
from server.reflection import enable_reflection
from server.settings import Settings
from server.tls import ReloadingServerCredentials
from server.workers.dispatcher import DeliveryWorker, RetrySchedule
from server.workers.metrics import WorkMetrics
from server.workers.runner import QueueRunner, Wakeup
from server.workers.tasks import TaskWorker
from services.audit_service import AuditServicer
from services.document_service import DocumentServicer
from services.health_service import HealthServicer as DeepHealthServicer
from services.identity_service import IdentityServicer
from services.key_service import KeyServicer
from services.namespace_service import NamespaceServicer
from services.organization_service import OrganizationServicer
from services.task_service import TaskServicer
from services.usage_service import UsageServicer
from services.vector_service import VectorServicer
from services.webhook_service import WebhookServicer
from storage.audit.log import AuditLog
from storage.backends.health import DependencyMonitor, DependencyState
from storage.backends.work_queue import WorkQueue
from storage.core.plans import PlanLookup
from storage.data.cascade import NamespacePurger
from storage.data.documents import DocumentStore
from storage.data.tasks import TaskStore
from storage.data.vectors import VectorStore
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import CreditAccounts
from storage.metering.rate_limiter import RateLimiter
from storage.metering.usage import UsageRecorder
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.key_verifier import KeyVerifier
from storage.tenancy.keys import KeyStore
from storage.tenancy.namespaces import NamespaceStore
from storage.tenancy.organizations import OrganizationStore
from storage.webhooks.organization_events import OrganizationEvents
from storage.webhooks.outbox import EventOutbox
from storage.webhooks.sealing import SecretBox
from storage.webhooks.sender import WebhookSender
from storage.webhooks.store import DeliveryStore, WebhookStore
from storage.webhooks.targets import TargetPolicy

__all__ = [
    "SERVICE_DESCRIPTORS",
    "Components",
    "RunningServer",
    "build_components",
    "create_server",
]

_LOG = logging.getLogger("meshgate.server")

SERVICE_DESCRIPTORS = (
    organization_service_pb2.DESCRIPTOR.services_by_name["OrganizationService"],
    key_service_pb2.DESCRIPTOR.services_by_name["KeyService"],
    namespace_service_pb2.DESCRIPTOR.services_by_name["NamespaceService"],
    identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    document_service_pb2.DESCRIPTOR.services_by_name["DocumentService"],
    vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"],
    usage_service_pb2.DESCRIPTOR.services_by_name["UsageService"],
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
    health_service_pb2.DESCRIPTOR.services_by_name["HealthService"],
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
    webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"],
)

# The stores each service cannot work without; a service is NOT_SERVING while one is down.
# Redis: revocations propagate through it, and costed calls need it for credits.
SERVICE_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "": ("mongodb",),
    "meshgate.v1.OrganizationService": ("mongodb",),
    "meshgate.v1.KeyService": ("mongodb", "redis"),
    "meshgate.v1.NamespaceService": ("mongodb", "redis", "qdrant"),
    "meshgate.v1.IdentityService": ("mongodb",),
    "meshgate.v1.DocumentService": ("mongodb", "redis"),
    "meshgate.v1.VectorService": ("mongodb", "redis", "qdrant"),
    "meshgate.v1.UsageService": ("mongodb", "redis"),
    "meshgate.v1.AuditService": ("mongodb",),
    "meshgate.v1.HealthService": (),
    "meshgate.v1.TaskService": ("mongodb", "redis"),
    "meshgate.v1.WebhookService": ("mongodb",),
}


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    invalidation: InvalidationBus
    verifier: KeyVerifier
    tls: ReloadingServerCredentials | None
    accounts: CreditAccounts
    usage: UsageRecorder
    metrics_port: int = 0
    metrics_server: Any = None
    # counters of the background work (tasks, deliveries)
    work_metrics: WorkMetrics = field(default_factory=WorkMetrics)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def flush_usage(self, *, everything: bool = False) -> None:
        """Ledger first, then the credit settlement it accounts for."""
        spent = self.accounts.spent_snapshot()
        await self.usage.flush()
        await self.accounts.settle(spent=spent, everything=everything)

    async def stop(self, grace_s: float) -> None:
        """Drain: health turns NOT_SERVING, new calls are refused, in-flight ones finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.verifier.flush_last_used()
        try:
            await self.accounts.drain()
            await self.flush_usage(everything=True)
        except Exception as exc:
            _LOG.error("could not settle usage and credits at shutdown: %s", type(exc).__name__)


async def _every(
    every_s: float,
    action: Callable[[], Awaitable[object]],
    *,
    failing: str,
    first: bool = False,
    level: int = logging.WARNING,
) -> None:
    """`action` forever, `every_s` apart (the first time at once with `first`); a failure
    is logged and the next round tries again: a store hiccup never ends the loop."""
    if not first:
        await asyncio.sleep(every_s)
    while True:
        try:
            await action()
        except Exception as exc:
            _LOG.log(level, "could not %s: %s", failing, type(exc).__name__)
        await asyncio.sleep(every_s)


@dataclass
class _Background:
    """The runners of ingestion tasks, webhook deliveries and interrupted event fan-outs."""

    metrics: WorkMetrics
    runners: dict[str, QueueRunner]


def _background(settings: Settings, c: Components) -> _Background:
    if sum(settings.webhook_retry_schedule) < 24 * 3600:
        _LOG.warning("the webhook retry schedule spans less than a day")
    queue, outbox = c.queue, c.outbox
    metrics = WorkMetrics(queue_depth=queue.depth)
    task_lease = timedelta(seconds=settings.task_lease_s)
    task_worker = TaskWorker(
        tasks=c.tasks,
        queue=queue,
        documents=c.documents,
        vectors=c.vectors,
        outbox=outbox,
        metrics=metrics,
        lease=task_lease,
        max_attempts=settings.task_max_attempts,
        logger=logging.getLogger("meshgate.tasks"),
    )
    delivery_worker = DeliveryWorker(
        queue=queue,
        deliveries=c.deliveries,
        webhooks=c.webhooks,
        outbox=outbox,
        sender=c.sender,
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
            wakeup=c.task_due,
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
            wakeup=c.delivery_due,
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
    return _Background(metrics=metrics, runners=runners)


@dataclass
class Components:
    """Everything the servicers and the chain share, built once per server."""

    organizations: OrganizationStore
    keys: KeyStore
    namespaces: NamespaceStore
    verifier: KeyVerifier
    documents: DocumentStore
    vectors: VectorStore
    purger: NamespacePurger
    invalidation: InvalidationBus
    limiter: RateLimiter
    accounts: CreditAccounts
    credit_events: CreditEvents
    usage: UsageRecorder
    plan_of: PlanLookup
    rate_limit: RateLimit
    metrics: Metrics
    audit: AuditLog
    # background work: the shared queue, what feeds it, and the wake-ups of this process's runners
    queue: WorkQueue
    tasks: TaskStore
    webhooks: WebhookStore
    deliveries: DeliveryStore
    outbox: EventOutbox
    events: OrganizationEvents
    sender: WebhookSender
    task_due: Wakeup
    delivery_due: Wakeup
    serving: dict[str, bool] = field(default_factory=dict)


def _sender(settings: Settings) -> WebhookSender:
    ssl_context = ssl.create_default_context(
        cafile=str(settings.webhook_ca_file) if settings.webhook_ca_file else None
    )
    return WebhookSender(
        policy=TargetPolicy.from_entries(settings.webhook_allowed_hosts),
        timeout_s=settings.webhook_timeout_s,
        max_response_bytes=settings.webhook_max_response_bytes,
        ssl_context=ssl_context,
    )


async def build_components(settings: Settings, backends: Backends) -> Components:
    """In dependency order, so every collaborator is a constructor argument: the runners'
    wake-ups before the outbox and the servicers that add work, the organization events
    before the credit events that publish through them."""
    organizations = OrganizationStore(mongo=backends.mongo)
    namespaces = NamespaceStore(mongo=backends.mongo)
    keys = KeyStore(mongo=backends.mongo)
    verifier = KeyVerifier(
        keys=keys, accepted_environments=settings.environments, ttl_s=settings.key_cache_ttl_s
    )
    vectors = VectorStore(
        mongo=backends.mongo, qdrant=backends.qdrant, payload_index=backends.qdrant_remote
    )

    def on_live(live: bool) -> None:
        verifier.forget_all()
        namespaces.forget_all()
        verifier.cache_enabled = live

    def on_namespace(namespace_id: str) -> None:
        namespaces.forget(namespace_id)
        vectors.forget(namespace_id)

    metrics = Metrics()
    plan_of = PlanLookup(settings.plans, settings.default_plan)
    limiter = RateLimiter(
        redis=backends.redis,
        failure_mode=settings.rate_limit_on_redis_failure,
        timeout_s=settings.limiter_timeout_s,
        on_fallback=lambda _bucket: metrics.limiter_fallbacks.inc(),
    )
    box = SecretBox(settings.webhook_sealing_key())
    if not box.encrypts:
        _LOG.warning(
            "webhook signing secrets are stored unencrypted; set MESHGATE_WEBHOOK_SECRET_KEY"
        )
    queue = WorkQueue(mongo=backends.mongo)
    webhooks = WebhookStore(mongo=backends.mongo, box=box)
    deliveries = DeliveryStore(mongo=backends.mongo)
    task_due, delivery_due = Wakeup(), Wakeup()
    outbox = EventOutbox(
        mongo=backends.mongo,
        queue=queue,
        webhooks=webhooks,
        deliveries=deliveries,
        on_delivery=delivery_due.wake,
    )
    events = OrganizationEvents(outbox=outbox, organizations=organizations, namespaces=namespaces)
    credit_events = CreditEvents(mongo=backends.mongo, publisher=events)
    audit = AuditLog(mongo=backends.mongo)
    await audit.ensure_indexes()
    replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    usage = UsageRecorder(mongo=backends.mongo, replica=replica)
    await usage.ensure_indexes()
    return Components(
        organizations=organizations,
        keys=keys,
        namespaces=namespaces,
        verifier=verifier,
        documents=DocumentStore(mongo=backends.mongo),
        vectors=vectors,
        purger=NamespacePurger(
            mongo=backends.mongo, redis=backends.redis, vectors=vectors, namespaces=namespaces
        ),
        invalidation=InvalidationBus(
            redis=backends.redis,
            on_key=verifier.forget_key,
            on_namespace=on_namespace,
            on_live=on_live,
        ),
        limiter=limiter,
        accounts=CreditAccounts(
            redis=backends.redis,
            replica=replica,
            fail_open=settings.credits_fail_open,
            timeout_s=max(settings.limiter_timeout_s, 0.5),
            on_threshold=credit_events.record,
        ),
        credit_events=credit_events,
        usage=usage,
        plan_of=plan_of,
        rate_limit=RateLimit(limiter=limiter, plan_of=plan_of, metrics=metrics),
        metrics=metrics,
        audit=audit,
        queue=queue,
        tasks=TaskStore(mongo=backends.mongo, queue=queue),
        webhooks=webhooks,
        deliveries=deliveries,
        outbox=outbox,
        events=events,
        sender=_sender(settings),
        task_due=task_due,
        delivery_due=delivery_due,
    )


def dependency_monitor(
    settings: Settings, backends: Backends, c: Components, health: HealthServicer
) -> DependencyMonitor:
    """Probes every store; a flip updates the grpc.health.v1 status of the services needing it."""

    async def on_change(states: Mapping[str, DependencyState]) -> None:
        for service, needs in SERVICE_DEPENDENCIES.items():
            serving = all(states[n].up for n in needs if n in states)
            c.serving[service or "(server)"] = serving
            c.metrics.serving.labels(service or "(server)").set(float(serving))
            await health.set(
                service,
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )
        for name, state in states.items():
            c.metrics.dependency_up.labels(name).set(float(state.up))
            c.metrics.dependency_latency.labels(name).set(state.latency_s)

    return DependencyMonitor(
        probes={
            "mongodb": backends.mongo.ping,
            "redis": backends.redis.ping,
            "qdrant": backends.qdrant.get_collections,
        },
        interval_s=settings.health_interval_s,
        timeout_s=min(settings.backend_timeout_s, 2.0),
        on_change=on_change,
    )


def build_chain(
    settings: Settings, c: Components, tracer: trace.Tracer | None = None
) -> SecurityChain:
    """The request path of DESIGN.md, in order; which steps apply comes from each policy."""
    policies = build_policy_table(SERVICE_DESCRIPTORS)
    audit = AuditTrail(log=c.audit)
    for method in undeclared_methods(SERVICE_DESCRIPTORS, policies):
        _LOG.warning("method %s declares no policy and will refuse every call", method)
    return SecurityChain(
        policies=policies,
        errors=ErrorMapper(logger=logging.getLogger("meshgate.errors")),
        steps=(
            PeerIdentity(trusted_proxies=settings.trusted_proxies),
            Authentication(verifier=c.verifier),
            OrganizationIdentity(organizations=c.organizations),
            Authorization(internal_peers=settings.internal_peers),
            NamespaceScope(namespaces=c.namespaces),
            c.rate_limit,
            Credits(accounts=c.accounts, plan_of=c.plan_of, metrics=c.metrics),
            audit,
        ),
        observers=(
            Telemetry(access_log=logging.getLogger("meshgate.access"), metrics=c.metrics),
            UsageObserver(usage=c.usage, accounts=c.accounts),
            audit,
        ),
        logger=_LOG,
        tracer=tracer,
    )


def _export_component_metrics(c: Components) -> None:
    m = c.metrics
    cache = c.verifier.cache
    m.counter_from("meshgate_key_cache_hits_total", "verified-key cache hits", lambda: cache.hits)
    m.counter_from(
        "meshgate_key_cache_misses_total", "verified-key cache misses", lambda: cache.misses
    )
    m.counter_from(
        "meshgate_invalidations_received_total",
        "revocations, rotations and namespace deletions heard from other replicas",
        lambda: c.invalidation.received,
    )
    m.gauge_from(
        "meshgate_audit_queue_depth",
        "audit events waiting to be written (grows while MongoDB is down)",
        lambda: {(): float(c.audit.depth)},
    )
    m.counter_from(
        "meshgate_audit_write_failures_total",
        "failed audit writes (retried)",
        lambda: c.audit.failures,
    )
    m.gauge_from(
        "meshgate_invalidation_channel_up",
        "1 while subscribed to the invalidation channel (key cache on)",
        lambda: {(): float(c.invalidation.live)},
    )


def _export_work_metrics(
    m: Metrics, work: WorkMetrics, depth: dict[tuple[str, ...], float]
) -> None:
    m.counter_from(
        "meshgate_task_failures_total", "ingestion tasks that failed", lambda: work.tasks_failed
    )
    m.labeled_counter_from(
        "meshgate_webhook_delivery_failures_total",
        "failed webhook delivery attempts (attempt), and deliveries out of retries (exhausted)",
        lambda: {
            ("attempt",): float(work.delivery_attempt_failures),
            ("exhausted",): float(work.deliveries_exhausted),
            ("gone",): float(work.deliveries_failed),
        },
        ("outcome",),
    )
    m.gauge_from(
        "meshgate_work_queue_depth",
        "rows in the shared work queue, by kind and state (all replicas)",
        lambda: dict(depth),
        ("kind", "state"),
    )


async def _refresh_queue_depth(work: WorkMetrics, depth: dict[tuple[str, ...], float]) -> None:
    """The queue depth needs MongoDB: read here, in the loop, not in the scrape thread."""
    rows = await work.queue_depth()
    depth.clear()
    depth.update(
        {(kind, state): float(n) for kind, states in rows.items() for state, n in states.items()}
    )


def _tracer(explicit: trace.Tracer | None) -> trace.Tracer | None:
    """The given tracer, or the global one when an SDK provider is installed (OTEL_*)."""
    if explicit is not None:
        return explicit
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    return provider.get_tracer("meshgate") if isinstance(provider, TracerProvider) else None


def add_servicers(server: grpc.aio.Server, c: Components, monitor: DependencyMonitor) -> None:
    organization_service_pb2_grpc.add_OrganizationServiceServicer_to_server(
        OrganizationServicer(), server
    )
    key_service_pb2_grpc.add_KeyServiceServicer_to_server(
        KeyServicer(
            keys=c.keys,
            namespaces=c.namespaces,
            invalidation=c.invalidation,
            events=c.events,
        ),
        server,
    )
    namespace_service_pb2_grpc.add_NamespaceServiceServicer_to_server(
        NamespaceServicer(namespaces=c.namespaces, invalidation=c.invalidation, purger=c.purger),
        server,
    )
    document_service_pb2_grpc.add_DocumentServiceServicer_to_server(
        DocumentServicer(documents=c.documents), server
    )
    vector_service_pb2_grpc.add_VectorServiceServicer_to_server(
        VectorServicer(vectors=c.vectors), server
    )
    usage_service_pb2_grpc.add_UsageServiceServicer_to_server(
        UsageServicer(
            usage=c.usage,
            accounts=c.accounts,
            organizations=c.organizations,
            grants=c.credit_events,
            plan_of=c.plan_of,
        ),
        server,
    )
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
        IdentityServicer(organizations=c.organizations), server
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(log=c.audit), server)
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(
        TaskServicer(tasks=c.tasks, on_change=c.task_due.wake), server
    )
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(
            webhooks=c.webhooks,
            deliveries=c.deliveries,
            queue=c.queue,
            sender=c.sender,
            on_retry=c.delivery_due.wake,
        ),
        server,
    )
    health_service_pb2_grpc.add_HealthServiceServicer_to_server(
        DeepHealthServicer(monitor=monitor, services=lambda: dict(c.serving)), server
    )


def bind(
    server: grpc.aio.Server, settings: Settings, address: str | None
) -> tuple[int, ReloadingServerCredentials | None]:
    where = address or settings.listen
    tls: ReloadingServerCredentials | None = None
    if settings.insecure:
        _LOG.warning("serving WITHOUT TLS (--insecure): for local debugging only")
        port = server.add_insecure_port(where)
    else:
        tls = ReloadingServerCredentials(
            cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca
        )
        port = server.add_secure_port(where, tls.credentials())
    if port == 0:
        raise OSError(f"could not bind {where}")
    return port, tls


async def create_server(
    settings: Settings,
    backends: Backends,
    *,
    address: str | None = None,
    extra_options: Sequence[tuple[str, int]] = (),
    tracer: trace.Tracer | None = None,
) -> RunningServer:
    c = await build_components(settings, backends)
    _export_component_metrics(c)
    server = grpc.aio.server(
        interceptors=(build_chain(settings, c, _tracer(tracer)),),
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # the transport's ceiling; above MAX_METADATA_BYTES the chain refuses clearly
            ("grpc.max_metadata_size", 8 * MAX_METADATA_BYTES),
            *extra_options,
        ],
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    monitor = dependency_monitor(settings, backends, c, health_servicer)
    background = _background(settings, c)
    queue_depth: dict[tuple[str, ...], float] = {}  # refreshed in the loop, read by scrapes
    _export_work_metrics(c.metrics, background.metrics, queue_depth)
    add_servicers(server, c, monitor)
    names = [d.full_name for d in SERVICE_DESCRIPTORS]
    await monitor.check_once()
    enable_reflection((*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    port, tls = bind(server, settings, address)
    metrics_server, metrics_port = (
        serve_metrics(c.metrics, settings.metrics_listen) if settings.metrics_listen else (None, 0)
    )
    await server.start()
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        invalidation=c.invalidation,
        verifier=c.verifier,
        tls=tls,
        accounts=c.accounts,
        usage=c.usage,
        metrics_port=metrics_port,
        metrics_server=metrics_server,
        work_metrics=background.metrics,
    )
    running.tasks += [
        asyncio.create_task(c.invalidation.run(), name="invalidation-bus"),
        asyncio.create_task(
            _every(30.0, c.verifier.flush_last_used, failing="record key last-used times"),
            name="last-used",
        ),
        asyncio.create_task(  # deletions a crash interrupted: at start-up, then every minute
            _every(60.0, c.purger.finish_pending, failing="finish namespace deletions", first=True),
            name="namespace-deletions",
        ),
        asyncio.create_task(  # kept buffered when it fails; retried next time
            _every(1.0, running.flush_usage, failing="flush usage / settle credits"),
            name="usage-flush",
        ),
        asyncio.create_task(c.audit.run(), name="audit-writer"),
        asyncio.create_task(monitor.run(), name="dependency-monitor"),
        asyncio.create_task(
            _every(
                5.0,
                lambda: _refresh_queue_depth(background.metrics, queue_depth),
                failing="read the work queue depth",
                first=True,
                level=logging.DEBUG,
            ),
            name="queue-depth",
        ),
        *(
            asyncio.create_task(runner.run(), name=f"{kind}-runner")
            for kind, runner in background.runners.items()
        ),
    ]
    await c.invalidation.wait_live(2.0)
    return running
