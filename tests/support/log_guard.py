"""What no log line may contain, and where the logs of the suite are.

Every API key secret and internal_id the suite creates goes into NEVER_LOGGED;
the session fixture in conftest.py formats every log record as the server does
and, at the end, searches those lines and the logs of the `meshgate serve`
processes the suite started (PROCESS_LOGS) for them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from server.logs import GuardedJsonFormatter

__all__ = ["NEVER_LOGGED", "PROCESS_LOGS", "FormattedLines", "leaked"]

NEVER_LOGGED: set[str] = set()
PROCESS_LOGS: list[Path] = []


class FormattedLines(logging.Handler):
    """Keeps every record formatted as the server's JSON lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(GuardedJsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def leaked(lines: list[str]) -> list[str]:
    """The first characters of every NEVER_LOGGED value found in `lines` or a process log."""
    texts = lines + [p.read_text(errors="replace") for p in PROCESS_LOGS if p.exists()]
    return sorted({s[:12] for s in NEVER_LOGGED for text in texts if s in text})
