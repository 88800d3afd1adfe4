"""The stores and helpers every servicer, chain step and background job shares.

Built once per server, in dependency order, so every collaborator is a
constructor argument: the wake-ups of the work runners exist before the outbox
and the servicers that add work, and the organization events before the
credit events that publish through them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from interceptors.metrics import Metrics
from server.backends import Backends
from server.settings import Settings
from server.workers.runner import Wakeup
from storage.audit.anchor import AuditAnchor
from storage.audit.checkpoints import AuditCheckpoints, CheckpointSink, FileSink, LogSink
from storage.audit.log import AuditLog
from storage.backends.breaker import StoreBreaker, StoreBreakers
from storage.backends.server_secrets import shared_secret
from storage.backends.work_queue import WorkQueue
from storage.core.page_tokens import PageTokens
from storage.core.plans import PlanLookup
from storage.data.backup import NamespaceBackup
from storage.data.cascade import NamespacePurger
from storage.data.documents import DocumentStore
from storage.data.tasks import TaskStore
from storage.data.vectors import VectorStore
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import CreditAccounts
from storage.metering.ledger import MongoLedger
from storage.metering.rate_limiter import RateLimiter
from storage.metering.usage import UsageRecorder
from storage.tenancy.idle_keys import IdleKeyStore
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.key_verifier import KeyVerifier
from storage.tenancy.keys import KeyStore
from storage.tenancy.namespaces import NamespaceStore
from storage.tenancy.organizations import OrganizationStore
from storage.webhooks.deliveries import DeliveryStore
from storage.webhooks.organization_events import OrganizationEvents
from storage.webhooks.outbox import EventOutbox
from storage.webhooks.sealing import SecretBox
from storage.webhooks.sender import WebhookSender
from storage.webhooks.store import WebhookStore
from storage.webhooks.targets import TargetPolicy

__all__ = ["Components", "build_components", "export_component_metrics"]

_LOG = logging.getLogger("meshgate.server")


@dataclass
class Components:
    """Everything the servicers, the chain and the background jobs share."""

    organizations: OrganizationStore
    keys: KeyStore
    idle_keys: IdleKeyStore
    namespaces: NamespaceStore
    verifier: KeyVerifier
    documents: DocumentStore
    vectors: VectorStore
    purger: NamespacePurger
    # namespace export and import (docs/backup.md)
    backups: NamespaceBackup
    invalidation: InvalidationBus
    limiter: RateLimiter
    accounts: CreditAccounts
    credit_events: CreditEvents
    usage: UsageRecorder
    plan_of: PlanLookup
    # the server's metrics registry (built by server/app.py; the steps count into it too)
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
    # seals the page tokens of every List method (interceptors/page_tokens.py)
    page_tokens: PageTokens
    # which stores are known to be down right now (fed by call failures and the monitor)
    breakers: StoreBreakers
    # signs and publishes audit checkpoints (None: no checkpoint keys configured)
    checkpoints: AuditCheckpoints | None = None

    async def flush_usage(self, *, everything: bool = False) -> None:
        """Ledger first (each stored batch is reported to the accounts), then the credit
        settlement it accounts for."""
        await self.usage.flush()
        await self.accounts.settle(everything=everything)


def _checkpoints(settings: Settings, audit: AuditLog) -> AuditCheckpoints | None:
    keys = settings.checkpoint_keys()
    if keys is None:
        return None
    sinks: list[CheckpointSink] = [
        LogSink() if sink == "log" else FileSink(Path(sink.removeprefix("file:")))
        for sink in settings.audit_checkpoint_sinks
    ]
    return AuditCheckpoints(keys=keys, sinks=sinks, log=audit)


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


async def build_components(
    settings: Settings, backends: Backends, *, metrics: Metrics
) -> Components:
    """The components, and the indexes of the audit log and the usage ledger."""
    mongo = backends.mongo
    organizations = OrganizationStore(mongo=mongo)
    namespaces = NamespaceStore(mongo=mongo)
    keys = KeyStore(mongo=mongo, max_keys=settings.max_keys_per_organization)
    verifier = KeyVerifier(
        keys=keys, accepted_environments=settings.environments, ttl_s=settings.key_cache_ttl_s
    )
    vectors = VectorStore(
        mongo=mongo,
        qdrant=backends.qdrant,
        payload_index=backends.qdrant_remote,
        # local mode is one node: a layout means nothing there
        layout=settings.qdrant_collections if backends.qdrant_remote else None,
    )

    def on_live(live: bool) -> None:
        verifier.set_live(live)
        namespaces.forget_all()

    def on_namespace(namespace_id: str) -> None:
        namespaces.forget(namespace_id)
        vectors.forget(namespace_id)

    plan_of = PlanLookup(settings.plans, settings.default_plan)
    limiter = RateLimiter(
        redis=backends.redis,
        failure_mode=settings.rate_limit_on_redis_failure,
        timeout_s=settings.limiter_timeout_s,
        on_fallback=lambda _bucket: metrics.limiter_fallbacks.inc(),
        max_buckets=settings.rate_limit_max_buckets,
    )
    box = SecretBox(settings.webhook_sealing_keys())
    if not box.encrypts:
        _LOG.warning(
            "webhook signing secrets are stored unencrypted; set MESHGATE_WEBHOOK_SECRET_KEY"
            " or MESHGATE_WEBHOOK_SECRET_KEYS"
        )
    queue = WorkQueue(mongo=mongo)
    webhooks = WebhookStore(mongo=mongo, box=box)
    deliveries = DeliveryStore(mongo=mongo)
    task_due, delivery_due = Wakeup(), Wakeup()
    outbox = EventOutbox(
        mongo=mongo,
        queue=queue,
        webhooks=webhooks,
        deliveries=deliveries,
        on_delivery=delivery_due.wake,
    )
    events = OrganizationEvents(outbox=outbox, organizations=organizations, namespaces=namespaces)
    credit_events = CreditEvents(mongo=mongo, publisher=events)
    audit = AuditLog(mongo=mongo, anchor=AuditAnchor(redis=backends.redis))
    await audit.ensure_indexes()
    replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    page_keys = settings.page_token_key_list() or (await shared_secret(mongo, "page_tokens"),)
    accounts = CreditAccounts(
        redis=backends.redis,
        replica=replica,
        ledger=MongoLedger(mongo=mongo, events=credit_events),
        fail_open=settings.credits_fail_open,
        timeout_s=max(settings.limiter_timeout_s, 0.5),
        rebuild_timeout_s=settings.backend_timeout_s,
        on_threshold=credit_events.record,
    )
    # every stored batch of the ledger is settled by the accounts
    usage = UsageRecorder(mongo=mongo, replica=replica, on_flushed=accounts.recorded)
    await usage.ensure_indexes()
    documents = DocumentStore(mongo=mongo)
    sender = _sender(settings)
    backups = NamespaceBackup(
        mongo=mongo,
        documents=documents,
        vectors=vectors,
        webhooks=webhooks,
        vet_url=sender.vet,
        meshgate_version=importlib.metadata.version("meshgate"),
        limits=settings.backups,
    )
    return Components(
        organizations=organizations,
        keys=keys,
        idle_keys=IdleKeyStore(mongo=mongo),
        namespaces=namespaces,
        verifier=verifier,
        documents=documents,
        vectors=vectors,
        backups=backups,
        purger=NamespacePurger(
            mongo=mongo, redis=backends.redis, vectors=vectors, namespaces=namespaces
        ),
        invalidation=InvalidationBus(
            redis=backends.redis,
            on_key=verifier.forget_key,
            on_namespace=on_namespace,
            on_live=on_live,
        ),
        limiter=limiter,
        accounts=accounts,
        credit_events=credit_events,
        usage=usage,
        plan_of=plan_of,
        metrics=metrics,
        audit=audit,
        queue=queue,
        tasks=TaskStore(mongo=mongo, queue=queue),
        webhooks=webhooks,
        deliveries=deliveries,
        outbox=outbox,
        events=events,
        sender=sender,
        task_due=task_due,
        delivery_due=delivery_due,
        page_tokens=PageTokens(page_keys),
        breakers=_breakers(settings, backends),
        checkpoints=_checkpoints(settings, audit),
    )


def _breakers(settings: Settings, backends: Backends) -> StoreBreakers:
    """MongoDB's and Qdrant's; Redis has fallbacks of its own (docs/limits.md)."""
    # a probe waits as long as a call would: a shorter one fails on a busy host (an answer
    # that came late is no outage), and the probe only confirms, or clears, what was seen
    timeout_s = settings.backend_timeout_s
    mongodb = StoreBreaker(name="mongodb", probe=backends.mongo.ping, probe_timeout_s=timeout_s)
    backends.mongo.on_driver_signals(hint=mongodb.suspect, checked=mongodb.checked)
    qdrant = StoreBreaker(
        name="qdrant", probe=backends.qdrant.get_collections, probe_timeout_s=timeout_s
    )
    return StoreBreakers({"mongodb": mongodb, "qdrant": qdrant})


def export_component_metrics(c: Components) -> None:
    """Counters and gauges the components keep themselves, read at scrape time."""
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
    checkpoints = c.checkpoints
    if checkpoints is not None:
        m.counter_from(
            "meshgate_audit_checkpoints_published_total",
            "signed audit checkpoints every sink took",
            lambda: checkpoints.published,
        )
        m.counter_from(
            "meshgate_audit_checkpoint_failures_total",
            "audit checkpoints a sink could not take (published again next round)",
            lambda: checkpoints.failures,
        )
    m.counter_from(
        "meshgate_usage_calls_folded_total",
        "refused calls counted in usage without their organization and key because the"
        " usage counters held their most entries (MongoDB slow or down)",
        lambda: c.usage.folded,
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
        "meshgate_store_failing_fast",
        "1 while calls needing the store are refused at once (its circuit breaker is open)",
        lambda: {(name,): float(not b.closed) for name, b in c.breakers.breakers.items()},
        ("store",),
    )
    m.labeled_counter_from(
        "meshgate_store_breaker_opened_total",
        "times a store was found unreachable and calls needing it began to fail fast",
        lambda: {(name,): float(b.opened) for name, b in c.breakers.breakers.items()},
        ("store",),
    )
    m.labeled_counter_from(
        "meshgate_credit_thresholds_crossed_total",
        "organizations crossing 80, 95 or 100 % of a month's credits (each crossing once,"
        " counted by the replica that recorded it)",
        lambda: {(str(t),): float(n) for t, n in sorted(c.credit_events.crossed.items())},
        ("threshold",),
    )
    m.gauge_from(
        "meshgate_invalidation_channel_up",
        "1 while subscribed to the invalidation channel (key cache on)",
        lambda: {(): float(c.invalidation.live)},
    )
