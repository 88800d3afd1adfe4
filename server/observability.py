"""Metrics (Prometheus exposition on a separate port) and tracing (OpenTelemetry, `OTEL_*`).

Metrics use prometheus-client with one registry per server: the per-call cost
is a dictionary lookup and a histogram observation. Tracing is off unless
`OTEL_TRACES_EXPORTER` names an exporter (`console`, or `otlp` when
opentelemetry-exporter-otlp is installed); then every call is a SERVER span
following the rpc semantic conventions, with child spans for MongoDB commands
(PyMongo command monitoring), Redis scripts and Qdrant calls, and log lines
carry the trace id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from prometheus_client import start_http_server

from interceptors.metrics import Metrics

__all__ = ["configure_tracing", "serve_metrics", "server_tracer"]

_LOG = logging.getLogger("meshgate.observability")


def serve_metrics(metrics: Metrics, listen: str) -> tuple[Any, int]:
    """Plain-HTTP /metrics on `listen` (loopback by default); returns (server, port)."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(
        int(port), addr=host or "127.0.0.1", registry=metrics.registry
    )
    return server, int(server.server_port)


def configure_tracing(env: Mapping[str, str] | None = None) -> bool:
    """Install an SDK tracer provider when OTEL_TRACES_EXPORTER asks for one; True if tracing."""
    env = os.environ if env is None else env
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none") or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_TRACES_EXPORTER=otlp needs `pip install opentelemetry-exporter-otlp`"
            ) from exc
        exporter = OTLPSpanExporter()
    else:
        raise RuntimeError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: use none, console or otlp")
    service = env.get("OTEL_SERVICE_NAME", "meshgate")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _LOG.info("tracing on: %s exporter", exporter_name)
    return True


def server_tracer(explicit: trace.Tracer | None) -> trace.Tracer | None:
    """The given tracer, or the global one when an SDK provider is installed (OTEL_*)."""
    if explicit is not None:
        return explicit
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    return provider.get_tracer("meshgate") if isinstance(provider, TracerProvider) else None
