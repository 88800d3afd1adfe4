"""JSON log lines with a formatter-level guard.

The guard drops fields that must never be logged (internal_id, secrets,
credentials) and redacts anything shaped like an API key, a webhook secret or
a UUID (the form of internal ids) from every message and value.

An access line (interceptors/access_log.py) takes a shorter way: its fields
that no caller chooses arrive as ready JSON, and only the request id, the
peer identity and a judged call's HTTP path are redacted and escaped here.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from interceptors.access_log import AccessRecord
from server.log_buffer import BufferedAccessLines

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


_MAX_PATH = 1024


def _shortened(path: str) -> str:
    return path if len(path) <= _MAX_PATH else f"{path[:_MAX_PATH]}[…{len(path)} characters]"


def _json_text(value: str | None) -> str:
    return "null" if value is None else json.dumps(redact(value))


class GuardedJsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""
        # peer identities repeat (one per connection or client): redacted and escaped once
        self._peers: dict[str | None, str] = {}

    def _time(self, created: float) -> str:
        """ISO 8601 with milliseconds; the date and time to the second made once a second."""
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def _access(self, record: AccessRecord) -> str:
        request_id = record.request_id
        # a request id is [A-Za-z0-9._:-] (interceptors/telemetry.py): of the sensitive
        # shapes only a UUID fits, and it has hyphens; nothing in it needs escaping
        rid = json.dumps(redact(request_id)) if "-" in request_id else f'"{request_id}"'
        peer = self._peers.get(record.peer)
        if peer is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            peer = self._peers[record.peer] = _json_text(record.peer)
        trace_members = ""
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            trace_members = (
                f',"trace_id":"{span_context.trace_id:032x}"'
                f',"span_id":"{span_context.span_id:016x}"'
            )
        # a sidecar's judged call: the path it asked about (caller-chosen, at most 1 KiB)
        path = (
            "" if record.path is None else f',"path":{json.dumps(_shortened(redact(record.path)))}'
        )
        return (
            f'{{"time":"{self._time(record.created)}","level":"INFO",'
            f'"logger":{json.dumps(record.name)},"message":"call"{trace_members},'
            f'"request_id":{rid},{record.trusted},"peer":{peer}{path}}}'
        )

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record, AccessRecord):
            return self._access(record)
        line: dict[str, Any] = {
            "time": self._time(record.created),
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
    """JSON lines on `stream` (stderr); access lines are written in blocks
    (server/log_buffer.py), every other record at once."""
    handler = BufferedAccessLines(stream or sys.stderr)
    handler.setFormatter(GuardedJsonFormatter())
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, BufferedAccessLines):
            replaced.close()  # its held lines are written, its writer thread ends
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pymongo", "asyncio", "grpc", "httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
