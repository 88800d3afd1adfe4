"""meshgate's version and the revision it was built from: `meshgate --version`, the start-up
line and the `meshgate_build_info` gauge all read them here.

The version is the installed distribution's (pyproject.toml's `version`, the one place
it is written). The revision is the commit: `server/REVISION` when the build wrote one
(the container image's build stage does, from its REVISION build argument), else
`git rev-parse` when running from a git checkout, else `unknown`.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["revision", "version", "version_line"]

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def version() -> str:
    try:
        return metadata.version("meshgate")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@functools.cache
def revision() -> str:
    written = _PACKAGE_DIR / "REVISION"
    if written.is_file():
        return written.read_text().strip() or "unknown"
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607 - git from the PATH
            cwd=_PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git here
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else "unknown"


def version_line() -> str:
    """`meshgate 0.1.0 (revision 1a2b3c4d5e6f)`: what `meshgate --version` prints."""
    return f"meshgate {version()} (revision {revision()})"
