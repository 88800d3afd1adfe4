"""Start-up failures an operator fixes in the environment, and the exit codes of `meshgate`.

Each is shown as one line on stderr (`error: ...`), without a traceback: the
message names the setting, the file or the store, and where. Anything else that
stops the command is a bug, logged with its traceback (exit code 1). The table
is in docs/operations.md (Commands).
"""

from __future__ import annotations

__all__ = [
    "EXIT_BUG",
    "EXIT_CONFIGURATION",
    "EXIT_ENVIRONMENT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EnvironmentFailure",
    "ListenError",
]

EXIT_OK = 0
# an unexpected error: a bug, logged with its traceback
EXIT_BUG = 1
# the command line or a setting: a bad value, a store URL missing, a TLS file missing or bad
EXIT_CONFIGURATION = 2
# the environment: a store unreachable through the start-up wait, an address taken
EXIT_ENVIRONMENT = 3
# SIGINT before serving began
EXIT_INTERRUPTED = 130


class EnvironmentFailure(Exception):
    """The settings are valid but the world does not match them (exit code 3)."""


class ListenError(EnvironmentFailure):
    """An address to listen on is taken, or is not an address of this machine."""
