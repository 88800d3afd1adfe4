"""The access line of one call, built from parts the server already checked.

A call's access line used to be an ordinary `logger.info(...)` with ten extra
fields: the logging module looks up the caller's frame, thread and process for
every record, and the guarded formatter ran its redaction regex over every
field before `json.dumps`. Most of those fields cannot carry caller text: the
method is one of the server's registered names, the status an enum, the ids
were minted by meshgate in a fixed alphabet, the peer address comes from grpc.
`AccessRecord` is still a `logging.LogRecord` (handlers, filters and pytest's
capture see an ordinary record with the same attributes), but it is made
without those lookups and carries its JSON members for those fields ready-made
(`trusted`); the formatter (server/logs.py) redacts and escapes only the two
fields a caller can choose: the request id and the peer identity.
"""

from __future__ import annotations

import json
import logging

from calls.state import CallState

__all__ = ["AccessRecord"]

# what LogRecord's constructor would have looked up, for handlers that read it
_DEFAULTS = logging.LogRecord("", logging.INFO, "", 0, "call", (), None).__dict__


class AccessRecord(logging.LogRecord):
    """One call's access-log record (`message` "call" at INFO, with the call's fields)."""

    request_id: str
    method: str
    status: str
    duration_ms: float
    organization_id: str | None
    namespace_id: str | None
    key_id: str | None
    peer: str | None
    peer_address: str
    _trusted: str

    def __init__(self, name: str, created: float, call: CallState, duration_s: float) -> None:
        # LogRecord.__init__ is not called: it is the cost this class exists to avoid; what it
        # would look up is copied (formatters read the record's __dict__), and the record's
        # attributes are set in the same step (one dict made, not a copy and 14 stores)
        principal = call.principal
        namespace = call.namespace
        key = call.key
        method = call.method
        status = call.code.name
        duration_ms = round(duration_s * 1000, 3)
        organization_id = principal.organization.organization_id if principal else None
        namespace_id = namespace.namespace_id if namespace else None
        key_id = key.key_id if key else None
        peer_address = call.peer_address
        self.__dict__ = {
            **_DEFAULTS,
            "name": name,
            "created": created,
            "msecs": (created - int(created)) * 1000,
            "request_id": call.request_id,
            "method": method,
            "status": status,
            "duration_ms": duration_ms,
            "organization_id": organization_id,
            "namespace_id": namespace_id,
            "key_id": key_id,
            "peer": call.peer_identity,
            "peer_address": peer_address,
            # JSON members of the fields no caller chooses: method (a registered name),
            # status, duration, the ids meshgate minted ([0-9A-Za-z_]) and grpc's peer address
            "_trusted": (
                f'"method":"{method}","status":"{status}",'
                f'"duration_ms":{duration_ms!r},'
                f'"organization_id":{_quoted(organization_id)},'
                f'"namespace_id":{_quoted(namespace_id)},'
                f'"key_id":{_quoted(key_id)},'
                f'"peer_address":{_quoted(peer_address)}'
            ),
        }

    @property
    def trusted(self) -> str:
        return self._trusted


def _quoted(value: str | None) -> str:
    """A JSON string of a value the server made (no quote or backslash in the common case)."""
    if value is None:
        return "null"
    if '"' in value or "\\" in value or not value.isprintable():
        return json.dumps(value)
    return f'"{value}"'
