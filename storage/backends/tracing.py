"""Client spans for store calls, children of the current call's span (only when tracing).

MongoDB commands are traced by PyMongo's command monitoring (`MongoCommandSpans`),
Redis scripts and Qdrant calls by `client_span` at the few places that make them.
When no span is recording (tracing off) both cost one context lookup.

`trace_context()` is the W3C trace context of the current call, for work that
outlives it (a task keeps it, its webhook deliveries send it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pymongo import monitoring

__all__ = ["MongoCommandSpans", "client_span", "trace_context"]

_TRACER = trace.get_tracer("meshgate.storage")
_W3C = TraceContextTextMapPropagator()


def trace_context() -> dict[str, str]:
    """`traceparent` (and `tracestate` if any) of the current span: meshgate's server span
    when tracing, else the caller's, as the chain took it from the call; {} outside a trace.

    Only the W3C trace context: `baggage` is the caller's and stays inside the mesh."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


@contextlib.contextmanager
def client_span(system: str, operation: str, **attributes: Any) -> Iterator[None]:
    if not trace.get_current_span().is_recording():
        yield
        return
    with _TRACER.start_as_current_span(
        f"{system} {operation}",
        kind=trace.SpanKind.CLIENT,
        attributes={"db.system.name": system, "db.operation.name": operation, **attributes},
    ):
        yield


class MongoCommandSpans(monitoring.CommandListener):
    """One CLIENT span per MongoDB command issued while a call span is current."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], trace.Span] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not trace.get_current_span().is_recording():
            return
        span = _TRACER.start_span(
            f"mongodb {event.command_name}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "db.system.name": "mongodb",
                "db.operation.name": event.command_name,
                "db.namespace": event.database_name,
            },
        )
        self._open[(event.request_id, event.operation_id or 0)] = span

    def _end(self, event: Any, error: str | None) -> None:
        span = self._open.pop((event.request_id, event.operation_id or 0), None)
        if span is None:
            return
        if error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        span.end()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._end(event, None)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._end(event, event.failure.get("codeName", "failed") if event.failure else "failed")
