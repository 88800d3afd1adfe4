"""Building and running the server: components, the request path, the registered
services, health, reflection, the background jobs.

`create_server` is kept apart from the command line (`server/cli.py`) so
tests start real servers on `localhost:0` with the same wiring. What the
server offers is the registry (`server/registry.py`); what it shares is the
components (`server/components.py`); the request path every call takes is
`server/request_path.py`; what runs beside the calls is `server/background.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace

from interceptors.metrics import Metrics
from interceptors.request_metadata import MAX_METADATA_BYTES, UndecodableHeaders
from interceptors.sidecar.check import CheckDecider
from interceptors.sidecar.rate_limits import RateLimitDecider
from server.accept import GenericHandlersOnly
from server.backends import Backends
from server.background import build_background, export_work_metrics, start_background
from server.components import Components, build_components, export_component_metrics
from server.credentials import CredentialFiles
from server.health import HEALTH_SERVICE, TrackedHealth, add_health, dependency_monitor
from server.observability import export_build_info, serve_metrics, server_tracer
from server.policy_files import PolicyFiles, watched_policy_files
from server.reflection import enable_reflection
from server.registry import SERVICES, Probes, add_servicers
from server.request_path import build_chain, build_request_path
from server.settings import Settings
from server.sidecars import SIDECAR_SERVICES, SidecarAnswers, add_sidecar_services
from server.tls import ReloadingServerCredentials, bind
from server.tracing import export_tracing_metrics
from server.workers.metrics import WorkMetrics
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.key_verifier import KeyVerifier

__all__ = ["HANDSHAKE_TIMEOUT_S", "RunningServer", "create_server"]

_LOG = logging.getLogger("meshgate.server")
# how long a new connection may take to complete its TLS handshake (grpc's default: 120 s)
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A started server and everything it holds, all given at construction."""

    server: grpc.aio.Server
    port: int
    health: TrackedHealth
    components: Components
    tls: ReloadingServerCredentials | None
    # watches the store credential files (server/credentials.py); None: nothing to watch
    credentials: CredentialFiles | None
    # watches the route, bindings and method policy files (server/policy_files.py)
    policy_files: PolicyFiles | None
    # the plain-HTTP listener of /metrics, /healthz and /readyz (None, 0: not configured)
    metrics_server: Any
    metrics_port: int
    # counters of the background work (tasks, deliveries)
    work_metrics: WorkMetrics
    # the background jobs (server/background.py) and the file watchers
    tasks: tuple[asyncio.Task[None], ...]
    # the rate-limit service's decider (its caches are bounded: docs/security.md#limits)
    rate_limits: RateLimitDecider

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
        await self.health.drain()

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


async def create_server(
    settings: Settings,
    backends: Backends,
    *,
    address: str | None = None,
    extra_options: Sequence[tuple[str, int]] = (),
    tracer: trace.Tracer | None = None,
) -> RunningServer:
    """A started server on `address` (else the settings' listen address); `stop` drains it."""
    metrics = Metrics()
    c = await build_components(settings, backends, metrics=metrics)
    export_component_metrics(c)
    export_tracing_metrics(metrics)
    export_build_info(metrics)
    # grpc logs a traceback for each header value that is not UTF-8, before the chain runs:
    # the filter keeps that out of the log and lets the chain refuse the call instead
    UndecodableHeaders().install()
    path = build_request_path(settings, c)
    chain = build_chain(path, settings=settings, tracer=server_tracer(tracer))
    # methods routed without registering them: grpcio 1.85's accept loop waits over one
    # future per registered method for every call (server/accept.py, grpc/grpc#43461)
    server = GenericHandlersOnly(
        grpc.aio.server(
            interceptors=(chain,),
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # the transport's ceiling; above MAX_METADATA_BYTES the chain refuses clearly
                ("grpc.max_metadata_size", 8 * MAX_METADATA_BYTES),
                # connections: at most so many (beyond, closed as accepted), a TLS handshake
                # done within HANDSHAKE_TIMEOUT_S, an idle one closed with GOAWAY (clients
                # reconnect on their next call)
                ("grpc.max_allowed_incoming_connections", settings.max_connections),
                ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_TIMEOUT_S * 1000)),
                ("grpc.max_connection_idle_ms", int(settings.connection_idle_s * 1000)),
                *extra_options,
            ],
            # every call and stream in flight on the server, health watches and reflection
            # (public, no key) included: beyond, RESOURCE_EXHAUSTED before the chain runs
            maximum_concurrent_rpcs=settings.max_concurrent_calls,
        )
    )
    health = add_health(server, gauge=metrics.serving)
    monitor = dependency_monitor(settings, backends, c, health)
    background = build_background(settings, c)
    export_work_metrics(metrics, background)
    add_servicers(server, c, Probes(monitor=monitor, statuses=health.statuses))
    rate_limits = RateLimitDecider(
        rate_limit=path.rate_limit,
        plan_of=c.plan_of,
        organizations=c.organizations,
        keys=c.keys,
        key_cache_ttl_s=settings.key_cache_ttl_s,
        max_key_limits=settings.rate_limit_max_buckets,
    )
    answers = SidecarAnswers(
        check=CheckDecider(
            routes=settings.routes,
            steps=path.steps,
            observers=path.observers,
            errors=path.errors,
            dry_run=path.dry_run,
            remove_authorization=settings.ext_authz_remove_authorization,
        ),
        rate_limits=rate_limits,
        bindings=settings.ext_authz_bindings,
    )
    add_sidecar_services(server, answers)
    policy_files = watched_policy_files(settings, chain=chain, answers=answers)
    policy_files.export(metrics)
    await policy_files.check()  # the contents in force, logged with their digests
    await monitor.check_once()
    enable_reflection((*(s.name for s in SERVICES), *SIDECAR_SERVICES, HEALTH_SERVICE), server)
    port, tls = bind(server, settings, address)
    metrics_server, metrics_port = (
        serve_metrics(
            metrics,
            settings.metrics_listen,
            ready=lambda: health.serving,
            loop=asyncio.get_running_loop(),
        )
        if settings.metrics_listen
        else (None, 0)
    )
    await server.start()
    tasks = start_background(c, background, monitor)
    if policy_files.watching:
        tasks.append(asyncio.create_task(policy_files.run(), name="policy-files"))
    credentials = CredentialFiles(settings=settings, backends=backends)
    if credentials.watching:
        tasks.append(asyncio.create_task(credentials.run(), name="credential-files"))
    running = RunningServer(
        server=server,
        port=port,
        health=health,
        components=c,
        tls=tls,
        credentials=credentials if credentials.watching else None,
        policy_files=policy_files if policy_files.watching else None,
        metrics_server=metrics_server,
        metrics_port=metrics_port,
        work_metrics=background.metrics,
        tasks=tuple(tasks),
        rate_limits=rate_limits,
    )
    await c.invalidation.wait_live(2.0)
    return running
