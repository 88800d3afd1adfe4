"""Traces out of the process: the span pipeline the standard `OTEL_*` variables ask for.

`OTEL_TRACES_EXPORTER` names the exporter: `none` (the default: no tracing work at
all), `console`, or `otlp`: OTLP over gRPC with the OpenTelemetry project's exporter,
part of meshgate's install and image, configured by its own variables
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._HEADERS`,
`..._TIMEOUT`, `..._CERTIFICATE`, `..._INSECURE`, `..._COMPRESSION`). OTLP over HTTP
is not installed: `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` other than `grpc` is refused
at start-up rather than quietly sent over gRPC. Spans leave through the SDK's batch
processor (`OTEL_BSP_*`): a call only appends its span to a bounded queue and a thread
exports, so a collector that is down or slow never slows a call; spans that do not fit
(the queue is full) or whose export failed (after the exporter's retries, within its
timeout) are dropped, and counted: `meshgate_trace_spans_dropped_total{reason}` beside
`meshgate_trace_spans_exported_total`, on every server's /metrics (the tracer provider,
and so its counts, belong to the process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from interceptors.metrics import Metrics

__all__ = [
    "DROP_REASONS",
    "SPAN_EXPORT",
    "SpanExportCounts",
    "TracingError",
    "export_tracing_metrics",
    "tracer_provider_from_env",
]

_LOG = logging.getLogger("meshgate.tracing")
# why a span never reached the collector
DROP_REASONS = ("queue_full", "export_failed", "shutdown")


class TracingError(ValueError):
    """The OTEL_* variables ask for something this install cannot do."""


class SpanExportCounts:
    """Spans exported and dropped, by reason; written by the export thread and by the
    calls' threads, read when scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exported = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)

    def add_exported(self, count: int) -> None:
        with self._lock:
            self.exported += count

    def add_dropped(self, reason: str, count: int) -> None:
        with self._lock:
            self.dropped[reason] += count


# the process's counts: one tracer provider per process, whichever server reports them
SPAN_EXPORT = SpanExportCounts()


class _CountingExporter(SpanExporter):
    """The configured exporter, with its outcomes counted (spans of a failed export are
    lost: the SDK does not queue them again)."""

    def __init__(self, inner: SpanExporter, counts: SpanExportCounts) -> None:
        self._inner = inner
        self._counts = counts

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            self._counts.add_dropped("export_failed", len(spans))
            raise
        if result is SpanExportResult.SUCCESS:
            self._counts.add_exported(len(spans))
        else:
            self._counts.add_dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _QueueDrops:
    """The SDK batch processor's own hook for what it drops (`ProcessorMetricsT` of
    opentelemetry.sdk._shared_internal: `drop_items(count, error_type)` where a span is
    turned away, "queue_full" or "already_shutdown"), feeding our counts."""

    def __init__(self, counts: SpanExportCounts) -> None:
        self._counts = counts

    def register_queue_size(self, get_queue_size: Any) -> None:
        """Not kept: the queue's length is not a meshgate metric."""

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        reason = "shutdown" if error_type == "already_shutdown" else "queue_full"
        self._counts.add_dropped(reason, count)

    def finish_items(self, count: int) -> None:
        """Handed to the exporter: counted there, by outcome."""


class _CountedBatchProcessor(BatchSpanProcessor):
    """The SDK's batch processor (OTEL_BSP_* apply), its drops counted."""

    def __init__(self, exporter: SpanExporter, counts: SpanExportCounts) -> None:
        super().__init__(_CountingExporter(exporter, counts))
        batch = getattr(self, "_batch_processor", None)
        if batch is None or not hasattr(batch, "_metrics"):  # pragma: no cover
            raise TracingError(
                "this opentelemetry-sdk's batch processor cannot report its drops;"
                " meshgate is tested with opentelemetry-sdk 1.45"
            )
        batch._metrics = _QueueDrops(counts)


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingError(f"OTEL_TRACES_EXPORTER={name!r}: use none, console or otlp")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable, "").strip().lower()
        if protocol:
            if protocol != "grpc":
                raise TracingError(
                    f"{variable}={protocol!r}: meshgate exports OTLP over gRPC only (grpc)"
                )
            break
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        # xds-protos ships an older copy of opentelemetry/proto/; installed after
        # opentelemetry-proto, it replaces its files (`make setup` and the image reinstall
        # opentelemetry-proto last: tests/test_packaging.py)
        raise TracingError(
            f"OTEL_TRACES_EXPORTER=otlp: the OTLP exporter cannot load ({exc}); another "
            "package (xds-protos) replaced opentelemetry-proto's files: reinstall it with "
            "`pip install --force-reinstall --no-deps opentelemetry-proto`"
        ) from None
    return OTLPSpanExporter()


def tracer_provider_from_env(
    env: Mapping[str, str], *, counts: SpanExportCounts = SPAN_EXPORT
) -> TracerProvider | None:
    """The provider `env` asks for (None: tracing off), its spans counted in `counts`.

    The exporter and the batch processor read their own variables from the process
    environment, as the OpenTelemetry SDK does; `env` is that environment."""
    name = env.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if name in ("", "none") or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = _exporter(name, env)
    service = env.get("OTEL_SERVICE_NAME", "meshgate")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(_CountedBatchProcessor(exporter, counts))
    _LOG.info("tracing on: %s exporter", name)
    return provider


def export_tracing_metrics(metrics: Metrics, counts: SpanExportCounts = SPAN_EXPORT) -> None:
    """The process's span counts on this server's /metrics (zeros while tracing is off)."""
    metrics.counter_from(
        "meshgate_trace_spans_exported_total",
        "spans the trace exporter delivered",
        lambda: float(counts.exported),
    )
    metrics.labeled_counter_from(
        "meshgate_trace_spans_dropped_total",
        "spans that never reached the collector: queue_full (the batch queue was full),"
        " export_failed (the collector did not take them), shutdown",
        lambda: {(reason,): float(n) for reason, n in counts.dropped.items()},
        ("reason",),
    )
