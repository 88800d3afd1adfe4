"""Metrics and probes (plain HTTP on a separate port) and tracing (OpenTelemetry, `OTEL_*`).

Metrics use prometheus-client with one registry per server: the per-call cost
is a dictionary lookup and a histogram observation. The same listener answers
the kubelet's probes, which cannot present the client certificate the gRPC
port demands: `/healthz` (liveness: the process answers and its event loop
runs a callback within a second) and `/readyz` (readiness: the server's
grpc.health.v1 status, 503 while MongoDB is down or once draining has
started). Their bodies are one status word: no data, no secrets. Tracing is off unless
`OTEL_TRACES_EXPORTER` names an exporter (`console`, or `otlp`: OTLP over gRPC,
server/tracing.py); then every call is a SERVER span
following the rpc semantic conventions, with child spans for MongoDB commands
(PyMongo command monitoring), Redis scripts and Qdrant calls, and log lines
carry the trace id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from opentelemetry import trace
from prometheus_client import Gauge, make_wsgi_app

from interceptors.metrics import Metrics
from server.failures import ListenError
from server.tracing import TracingError, tracer_provider_from_env
from server.version import revision, version

__all__ = [
    "HttpListener",
    "configure_tracing",
    "export_build_info",
    "serve_metrics",
    "server_tracer",
]

_LOG = logging.getLogger("meshgate.observability")
# how long the event loop may take to run a callback before liveness fails
_LOOP_DEADLINE_S = 1.0


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _IPv6Server(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds: no access log for them."""


HttpListener = WSGIServer


def _loop_answers(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the event loop runs a callback soon: a loop stuck in a blocking call fails."""
    ran = threading.Event()
    try:
        loop.call_soon_threadsafe(ran.set)
    except RuntimeError:  # the loop is closed
        return False
    return ran.wait(_LOOP_DEADLINE_S)


def probes_and_metrics(
    metrics: Metrics, *, ready: Callable[[], bool], loop: asyncio.AbstractEventLoop
) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    """/healthz, /readyz (one status word each), everything else the Prometheus exposition."""
    exposition = make_wsgi_app(metrics.registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = _loop_answers(loop) if path == "/healthz" else ready()
            body = b"ok\n" if ok else b"unavailable\n"
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [body]
        answer: Iterable[bytes] = exposition(environ, start_response)
        return answer

    return app


def export_build_info(metrics: Metrics) -> None:
    """`meshgate_build_info{version,revision} 1`: what runs where, for dashboards and
    alerts (the same two values as `meshgate --version`)."""
    Gauge(
        "meshgate_build_info",
        "always 1; the labels name the meshgate version and the revision it was built from",
        ["version", "revision"],
        registry=metrics.registry,
    ).labels(version(), revision()).set(1)


def serve_metrics(
    metrics: Metrics, listen: str, *, ready: Callable[[], bool], loop: asyncio.AbstractEventLoop
) -> tuple[HttpListener, int]:
    """Plain HTTP on `listen` (loopback by default; `0.0.0.0:9464` or `[::]:9464` for a pod's
    address) in a thread of its own: metrics and the probes. Returns (server, port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    server_class = _IPv6Server if ":" in host else _ThreadingServer
    try:
        server = make_server(
            host,
            int(port),
            probes_and_metrics(metrics, ready=ready, loop=loop),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        raise ListenError(
            f"MESHGATE_METRICS_LISTEN: cannot listen on {listen}: {exc.strerror or exc}"
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server, int(server.server_port)


def configure_tracing(env: Mapping[str, str] | None = None) -> bool:
    """Install the SDK tracer provider OTEL_TRACES_EXPORTER asks for (server/tracing.py) as
    the process's; True if tracing. RuntimeError names a variable this install cannot
    honour (the command exits 2 with it)."""
    env = os.environ if env is None else env
    try:
        provider = tracer_provider_from_env(env)
    except TracingError as exc:
        raise RuntimeError(str(exc)) from None
    if provider is None:
        return False
    trace.set_tracer_provider(provider)
    return True


def server_tracer(explicit: trace.Tracer | None) -> trace.Tracer | None:
    """The given tracer, or the global one when an SDK provider is installed (OTEL_*)."""
    if explicit is not None:
        return explicit
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    return provider.get_tracer("meshgate") if isinstance(provider, TracerProvider) else None
