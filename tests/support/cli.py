"""The `meshgate` command as a process: run to its exit (`run_cli`), or started and kept
(`start_cli`, e.g. `meshgate serve`), always this checkout's code on this interpreter.

The environment is the caller's whole (`env`): `cli_env` builds the smallest one (no
MESHGATE_* of the test session leaks in), `replica_env` (tests/support/processes.py) one
for a server on the session's stores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ROOT", "cli_env", "run_cli", "start_cli"]

# the repository: the working directory of the commands, and their import path
ROOT = Path(__file__).resolve().parents[2]
_COMMAND = (sys.executable, "-m", "server.cli")
# the console script `pip install` made, as an operator runs it (its own import path)
_INSTALLED = (str(Path(sys.executable).with_name("meshgate")),)


def _command(installed: bool) -> tuple[str, ...]:
    return _INSTALLED if installed else _COMMAND


def cli_env(**variables: str) -> dict[str, str]:
    """PATH, this checkout and its generated stubs on PYTHONPATH, and `variables`."""
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "gen"))),
        **variables,
    }


def run_cli(
    *arguments: str,
    env: Mapping[str, str],
    cwd: Path = ROOT,
    timeout_s: float = 60,
    installed: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`meshgate <arguments>` run to its exit; its output captured as text. `installed`:
    the console script rather than this checkout's module."""
    return subprocess.run(
        [*_command(installed), *arguments],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def start_cli(
    *arguments: str,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path = ROOT,
    installed: bool = False,
) -> subprocess.Popen[bytes]:
    """`meshgate <arguments>` started, its output (stdout and stderr) going to `log_path`;
    the caller waits for it (tests/support/processes.py `wait_until_healthy`) and stops it.
    `installed`: the console script rather than this checkout's module."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [*_command(installed), *arguments],
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
