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

    def __init__(self, name: str, created: float, call: CallState, duration_s: float) -> None:
        # LogRecord.__init__ is not called: it is the cost this class exists to avoid; what it
        # would look up is copied (formatters read the record's __dict__)
        self.__dict__.update(_DEFAULTS)
        self.name = name
        self.created = created
        self.msecs = (created - int(created)) * 1000
        principal = call.principal
        namespace = call.namespace
        key = call.key
        self.request_id = call.request_id
        self.method = call.method
        self.status = call.code.name
        self.duration_ms = round(duration_s * 1000, 3)
        self.organization_id = principal.organization.organization_id if principal else None
        self.namespace_id = namespace.namespace_id if namespace else None
        self.key_id = key.key_id if key else None
        self.peer = call.peer_identity
        self.peer_address = call.peer_address
        # JSON members of the fields no caller chooses: method (a registered name), status,
        # duration, the ids meshgate minted ([0-9A-Za-z_]) and grpc's peer address
        self._trusted = (
            f'"method":"{self.method}","status":"{self.status}",'
            f'"duration_ms":{self.duration_ms!r},'
            f'"organization_id":{_quoted(self.organization_id)},'
            f'"namespace_id":{_quoted(self.namespace_id)},'
            f'"key_id":{_quoted(self.key_id)},'
            f'"peer_address":{_quoted(self.peer_address)}'
        )

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
