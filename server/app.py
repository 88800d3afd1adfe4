"""Building and running the server: components, the interceptor chain, the registered
services, health, reflection, the background jobs.

`create_server` is kept apart from the command line (`server/cli.py`) so
tests start real servers on `localhost:0` with the same wiring. What the
server offers is the registry (`server/registry.py`); what it shares is the
components (`server/components.py`); what runs beside the calls is
`server/background.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace

from interceptors.audit import AuditTrail
from interceptors.authentication import Authentication
from interceptors.authorization import Authorization
from interceptors.availability import StoreAvailability
from interceptors.chain import Observer, SecurityChain, Step
from interceptors.credits import Credits
from interceptors.decoding import MalformedRequests
from interceptors.errors import ErrorMapper
from interceptors.identity import OrganizationIdentity
from interceptors.namespace import NamespaceScope
from interceptors.page_tokens import PageTokenBinding
from interceptors.peer import PeerIdentity
from interceptors.request_metadata import MAX_METADATA_BYTES, UndecodableHeaders
from interceptors.sidecar.check import CheckDecider
from interceptors.sidecar.rate_limits import RateLimitDecider
from interceptors.telemetry import Telemetry
from interceptors.usage import UsageObserver
from server.accept import GenericHandlersOnly
from server.backends import Backends
from server.background import build_background, export_work_metrics, start_background
from server.components import Components, build_components, export_component_metrics
from server.credentials import CredentialFiles
from server.health import (
    HEALTH_SERVICE,
    TrackedHealth,
    add_health,
    dependency_monitor,
    not_serving,
)
from server.observability import serve_metrics, server_tracer
from server.policies import build_policy_table, undeclared_methods
from server.reflection import enable_reflection
from server.registry import SERVICES, add_servicers, descriptors, method_needs
from server.settings import Settings
from server.sidecars import SIDECAR_SERVICES, add_sidecar_services
from server.tls import ReloadingServerCredentials, bind
from server.workers.metrics import WorkMetrics
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.key_verifier import KeyVerifier

__all__ = ["RequestPath", "RunningServer", "build_chain", "build_request_path", "create_server"]

_LOG = logging.getLogger("meshgate.server")


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: TrackedHealth
    components: Components
    tls: ReloadingServerCredentials | None
    # watches the store credential files (server/credentials.py)
    credentials: CredentialFiles | None = None
    metrics_port: int = 0
    metrics_server: Any = None
    # counters of the background work (tasks, deliveries)
    work_metrics: WorkMetrics = field(default_factory=WorkMetrics)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def verifier(self) -> KeyVerifier:
        return self.components.verifier

    @property
    def invalidation(self) -> InvalidationBus:
        return self.components.invalidation

    async def flush_usage(self, *, everything: bool = False) -> None:
        await self.components.flush_usage(everything=everything)

    async def begin_drain(self) -> None:
        """Health turns NOT_SERVING for every service; calls are still served (load
        balancers and endpoint lists take a while to stop sending any)."""
        await not_serving(self.components, self.health)

    async def stop(self, grace_s: float) -> None:
        """Drain: health NOT_SERVING (if `begin_drain` did not already), new calls are
        refused, in-flight ones get `grace_s` to finish; then the background work stops.

        The metrics listener stays up to the end, so /readyz answers 503 while draining."""
        await self.begin_drain()
        await self.server.stop(grace_s)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.components.breakers.close()
        with contextlib.suppress(Exception):
            await self.verifier.flush_last_used()
        try:
            await self.components.accounts.drain()
            await self.flush_usage(everything=True)
        except Exception as exc:
            _LOG.error("could not settle usage and credits at shutdown: %s", type(exc).__name__)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


@dataclass(frozen=True, slots=True)
class RequestPath:
    """The steps and observers of DESIGN.md's request path, built once: the chain runs them
    for meshgate's own methods, the ext_authz decider for the sidecars' questions."""

    steps: tuple[Step, ...]
    observers: tuple[Observer, ...]
    errors: ErrorMapper


def build_request_path(settings: Settings, c: Components) -> RequestPath:
    audit = AuditTrail(log=c.audit)
    breakers = c.breakers.breakers
    needs = {
        method: tuple(breakers[store] for store in stores if store in breakers)
        for method, stores in method_needs().items()
    }
    return RequestPath(
        steps=(
            PeerIdentity(trusted_proxies=settings.trusted_proxies),
            StoreAvailability(needs=needs),
            Authentication(verifier=c.verifier),
            OrganizationIdentity(organizations=c.organizations),
            Authorization(
                internal_peers=settings.internal_peers, sidecar_peers=settings.ext_authz_peers
            ),
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
        errors=ErrorMapper(
            logger=logging.getLogger("meshgate.errors"), on_store_failure=c.breakers.failed
        ),
    )


def build_chain(
    settings: Settings,
    c: Components,
    tracer: trace.Tracer | None = None,
    *,
    path: RequestPath | None = None,
) -> SecurityChain:
    """The request path of DESIGN.md, in order; which steps apply comes from each policy."""
    policies = build_policy_table(descriptors())
    for method in undeclared_methods(descriptors(), policies):
        _LOG.warning("method %s declares no policy and will refuse every call", method)
    path = path or build_request_path(settings, c)
    return SecurityChain(
        policies=policies,
        errors=path.errors,
        steps=path.steps,
        observers=path.observers,
        logger=_LOG,
        tracer=tracer,
        malformed=MalformedRequests(metrics=c.metrics, logger=logging.getLogger("meshgate.input")),
        page_tokens=PageTokenBinding(tokens=c.page_tokens),
    )


async def create_server(
    settings: Settings,
    backends: Backends,
    *,
    address: str | None = None,
    extra_options: Sequence[tuple[str, int]] = (),
    tracer: trace.Tracer | None = None,
) -> RunningServer:
    """A started server on `address` (else the settings' listen address); `stop` drains it."""
    c = await build_components(settings, backends)
    export_component_metrics(c)
    # grpc logs a traceback for each header value that is not UTF-8, before the chain runs:
    # the filter keeps that out of the log and lets the chain refuse the call instead
    UndecodableHeaders().install()
    path = build_request_path(settings, c)
    # methods routed without registering them: grpcio 1.85's accept loop waits over one
    # future per registered method for every call (server/accept.py, grpc/grpc#43461)
    server = GenericHandlersOnly(
        grpc.aio.server(
            interceptors=(build_chain(settings, c, server_tracer(tracer), path=path),),
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # the transport's ceiling; above MAX_METADATA_BYTES the chain refuses clearly
                ("grpc.max_metadata_size", 8 * MAX_METADATA_BYTES),
                *extra_options,
            ],
        )
    )
    health = add_health(server)
    monitor = dependency_monitor(settings, backends, c, health)
    background = build_background(settings, c)
    export_work_metrics(c.metrics, background)
    add_servicers(server, c, monitor)
    add_sidecar_services(
        server,
        check=CheckDecider(
            routes=settings.routes,
            steps=path.steps,
            observers=path.observers,
            errors=path.errors,
            remove_authorization=settings.ext_authz_remove_authorization,
        ),
        rate_limits=RateLimitDecider(
            rate_limit=c.rate_limit,
            plan_of=c.plan_of,
            organizations=c.organizations,
            keys=c.keys,
            key_cache_ttl_s=settings.key_cache_ttl_s,
        ),
    )
    await monitor.check_once()
    enable_reflection((*(s.name for s in SERVICES), *SIDECAR_SERVICES, HEALTH_SERVICE), server)
    port, tls = bind(server, settings, address)
    metrics_server, metrics_port = (
        serve_metrics(
            c.metrics,
            settings.metrics_listen,
            ready=lambda: health.serving,
            loop=asyncio.get_running_loop(),
        )
        if settings.metrics_listen
        else (None, 0)
    )
    await server.start()
    running = RunningServer(
        server=server,
        port=port,
        health=health,
        components=c,
        tls=tls,
        metrics_port=metrics_port,
        metrics_server=metrics_server,
        work_metrics=background.metrics,
        tasks=start_background(c, background, monitor),
    )
    credentials = CredentialFiles(settings=settings, backends=backends)
    if credentials.watching:
        running.credentials = credentials
        running.tasks.append(asyncio.create_task(credentials.run(), name="credential-files"))
    await c.invalidation.wait_live(2.0)
    return running
