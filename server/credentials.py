"""Store credentials rotated without a restart: the files behind MESHGATE_MONGODB_URI_FILE
and MESHGATE_REDIS_URL_FILE are watched, and a changed one swaps the client behind the stores.

Kubernetes rotates a mounted secret by swapping a symlink, so the file's path
stays and its content changes. Like the certificates (server/tls.py), the
files are read again at most once a second; when one holds a new value that
is well-formed and connects (a MongoDB ping, a Redis PING), every call that
starts from then on uses the new connections, the calls in flight finish on
the old ones, and the old client is closed after the drain grace
(`MESHGATE_SHUTDOWN_GRACE_S`). A value that does not connect is logged and
the current connections stay; the file is read again each second, so a fix
(or the store catching up with the new password) is picked up. A Redis
Cluster URL cannot be switched this way: the change is logged, and a rolling
restart applies it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from redis.asyncio import Redis

from server.backends import Backends, open_redis
from server.settings import Settings, check_mongodb_uri
from storage.backends.redis_client import adopt_connections

__all__ = ["CredentialFiles"]

_LOG = logging.getLogger("meshgate.credentials")


@dataclass
class _Watched:
    name: str
    path: Path
    current: str
    switch: Callable[[str], Awaitable[Callable[[], Awaitable[None]]]]
    # the value that failed last, so a failure is logged once, not every second
    refused: str = ""


@dataclass
class CredentialFiles:
    settings: Settings
    backends: Backends
    check_interval_s: float = 1.0
    switches: int = 0
    # seconds from noticing a new value to new calls using it, for the last switch
    last_switch_s: float = 0.0
    _watched: list[_Watched] = field(default_factory=list)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        s = self.settings
        if s.mongodb_uri_file is not None and s.mongodb_uri is not None:
            self._watched.append(
                _Watched(
                    "MESHGATE_MONGODB_URI_FILE",
                    s.mongodb_uri_file,
                    s.mongodb_uri.reveal(),
                    self._switch_mongo,
                )
            )
        if s.redis_url_file is not None and s.redis_url is not None and s.redis_cluster:
            _LOG.info(
                "MESHGATE_REDIS_URL_FILE names a Redis Cluster: a rolling restart applies a change"
            )
        elif s.redis_url_file is not None and s.redis_url is not None:
            self._watched.append(
                _Watched(
                    "MESHGATE_REDIS_URL_FILE",
                    s.redis_url_file,
                    s.redis_url.reveal(),
                    self._switch_redis,
                )
            )

    @property
    def watching(self) -> bool:
        return bool(self._watched)

    async def run(self) -> None:
        """Check every `check_interval_s`, forever; cancel to stop (pending closes run first)."""
        try:
            while True:
                await asyncio.sleep(self.check_interval_s)
                await self.check()
        finally:  # stopping: the old connections close now
            pending = list(self._closing)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def check(self) -> None:
        for watched in self._watched:
            try:
                value = watched.path.read_text().strip()
            except OSError as exc:  # mid-rotation: keep the current connections
                _LOG.warning(
                    "%s unreadable, keeping the current connections: %s", watched.name, exc.strerror
                )
                continue
            if not value or value == watched.current:
                continue
            started = time.monotonic()
            try:
                close_old = await watched.switch(value)
            except Exception as exc:  # the new value does not connect (yet): keep the old one
                if value != watched.refused:  # once per value; tried again every second
                    _LOG.warning(
                        "%s changed but the new value does not connect (%s); keeping the"
                        " current connections",
                        watched.name,
                        type(exc).__name__,
                    )
                watched.refused = value
                continue
            watched.current, watched.refused = value, ""
            self.switches += 1
            self.last_switch_s = time.monotonic() - started
            _LOG.info(
                "%s changed: new calls use the new connections; the old ones close in %.0fs",
                watched.name,
                self.settings.shutdown_grace_s,
            )
            task = asyncio.create_task(self._close_later(close_old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, close: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.sleep(self.settings.shutdown_grace_s)
        finally:
            try:
                await close()
            except Exception as exc:
                _LOG.warning("could not close the old connections: %s", type(exc).__name__)

    async def _switch_mongo(self, uri: str) -> Callable[[], Awaitable[None]]:
        check_mongodb_uri(uri)
        previous = await self.backends.mongo.switch(uri)
        return previous.close

    async def _switch_redis(self, url: str) -> Callable[[], Awaitable[None]]:
        client = cast(Redis, self.backends.redis)  # a single node: clusters are not watched
        fresh = cast(
            Redis, open_redis(url, cluster=False, timeout_s=self.settings.backend_timeout_s)
        )
        try:
            previous = await adopt_connections(client, fresh)
        except BaseException:
            await fresh.aclose()
            raise
        return previous.disconnect
