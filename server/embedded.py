"""Embedded backends for `make run` and tests: no external servers needed.

MongoDB: SecantusDB's MongoDB server (WiredTiger storage, real B-tree
indexes) on loopback, in this process, so the server talks to it through the
real PyMongo driver exactly as it would to a real MongoDB. Its inserts and
indexed lookups stay flat as a collection grows; docs/embedded-mongodb.md has
the measurements, the differences from MongoDB and how meshgate avoids them.
Redis: fakeredis (with Lua) in process.

Both are the optional `embedded` extra (pyproject.toml), never part of a
production install or the container image: without it, MESHGATE_MONGODB_URI
and MESHGATE_REDIS_URL are required, and starting without them says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["EmbeddedEngineMissingError", "EmbeddedMongo", "embedded_redis"]


def _missing(store: str, setting: str) -> str:
    return (
        f"the embedded {store} engine is not installed: set {setting} to a {store},"
        " or install the `embedded` extra (pip install -e '.[embedded]'; `make run` does)"
    )


class EmbeddedEngineMissingError(RuntimeError):
    """A store URL is unset and the `embedded` extra that would stand in is not installed."""


class EmbeddedMongo:
    """A MongoDB-wire server on 127.0.0.1 with its data under `data_dir`.

    `data_dir=None` keeps the data in a temporary directory removed at close
    (tests). The server runs its own threads; `start` returns once it accepts
    connections, and `close` drains them and closes the storage (which holds
    an exclusive lock on `data_dir` while open).

    It announces itself as a standalone server, like a development `mongod`:
    no oplog is written, so there are no change streams and no multi-document
    transactions, neither of which meshgate uses.
    """

    def __init__(self, *, data_dir: Path | None, port: int = 0) -> None:
        self._data_dir = data_dir
        self._port = port
        self._server: Any = None

    @property
    def uri(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded MongoDB engine is not started")
        return f"{self._server.uri}?directConnection=true"

    def start(self) -> str:
        try:
            from secantus import SecantusDBServer
        except ImportError as error:
            raise EmbeddedEngineMissingError(_missing("MongoDB", "MESHGATE_MONGODB_URI")) from error
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        server = SecantusDBServer(
            host="127.0.0.1",
            port=self._port,
            storage_path=":memory:" if self._data_dir is None else str(self._data_dir),
            replica_set_name=None,
            enable_test_commands=False,
        )
        server.start()
        self._server = server
        return self.uri

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def embedded_redis() -> Any:
    """An in-process Redis (fakeredis, with Lua scripting) behind the redis.asyncio API."""
    try:
        import fakeredis
    except ImportError as error:
        raise EmbeddedEngineMissingError(_missing("Redis", "MESHGATE_REDIS_URL")) from error

    return fakeredis.FakeAsyncRedis()
