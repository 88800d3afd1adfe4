"""JSON log lines with a formatter-level guard.

The guard drops fields that must never be logged (internal_id, secrets,
credentials) and redacts anything shaped like an API key, a webhook secret or
a UUID (the form of internal ids) from every message and value.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

__all__ = ["FORBIDDEN_FIELDS", "GuardedJsonFormatter", "configure_logging", "redact"]

FORBIDDEN_FIELDS = frozenset(
    {"internal_id", "secret", "authorization", "api_key", "password", "token", "credentials"}
)
_SENSITIVE = re.compile(
    r"mg_(?:dev|stg|prod)_[0-9A-Za-z_]+"
    r"|whsec_[0-9A-Za-z+/=_-]+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?i:bearer)\s+\S+"
    r"|mongodb(?:\+srv)?://[^\s@]+@"
    r"|rediss?://[^\s@]+@"
)
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def redact(text: str) -> str:
    return _SENSITIVE.sub("[redacted]", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class GuardedJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line["trace_id"] = format(span_context.trace_id, "032x")
            line["span_id"] = format(span_context.span_id, "016x")
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if key in FORBIDDEN_FIELDS:
                line[key] = "[refused]"
                continue
            line[key] = _clean(value)
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, separators=(",", ":"))


def configure_logging(level: str, *, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(GuardedJsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pymongo", "asyncio", "grpc", "httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
