"""Embedded backends for `make run` and tests: no external servers needed.

MongoDB: the mongoeco engine (SQLite on disk, or memory) served over the
MongoDB wire protocol on loopback, in a thread with its own event loop, so the
server talks to it through the real PyMongo driver exactly as it would to a
real MongoDB. Redis: fakeredis (with Lua) in process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedMongo", "embedded_redis"]


class EmbeddedMongo:
    """A MongoDB-wire-compatible server on 127.0.0.1, owned by one thread."""

    def __init__(self, *, sqlite_path: Path | None, port: int = 0) -> None:
        self._path = sqlite_path
        self._port = port
        self._ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-mongo", daemon=True)

    @property
    def uri(self) -> str:
        return self._ready.result()

    def start(self, timeout_s: float = 30.0) -> str:
        self._thread.start()
        return self._ready.result(timeout=timeout_s)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            if not self._ready.done():
                self._ready.set_exception(error)

    async def _serve(self) -> None:
        from mongoeco.engines.memory import MemoryEngine
        from mongoeco.engines.sqlite import SQLiteEngine
        from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        engine: Any
        if self._path is None:
            engine = MemoryEngine()
        else:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            engine = SQLiteEngine(str(self._path))
        proxy = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=self._port)
        await proxy.start()
        self._ready.set_result(proxy.address.uri)
        try:
            await self._stop.wait()
        finally:
            await proxy.close()


def embedded_redis() -> Any:
    """An in-process Redis (fakeredis, with Lua scripting) behind the redis.asyncio API."""
    import fakeredis

    return fakeredis.FakeAsyncRedis()
