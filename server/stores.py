"""The stores at start-up: which URL each needs, where each is (never its credentials), and
waiting, with a bound, until every one answers.

`serve` and `bootstrap` wait rather than fail at the first refused connection:
stores and meshgate often start together (a Kubernetes rollout, a compose file),
and a few seconds of patience spares a restart. The wait is bounded
(MESHGATE_STARTUP_WAIT_S, 30 s by default, within the deployment's startup
probe of 60 s), and every store still unreachable is logged when first seen and
again every MESHGATE_STORE_DOWN_LOG_S; past the bound the command exits with
code 3 and one line naming the store, where it is and what was tried
(docs/operations.md, Commands). A bound of 0 fails fast, after one try.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from server.env_values import SettingsError
from server.failures import EnvironmentFailure
from server.settings import Settings

__all__ = [
    "StoreCheck",
    "StoreUnreachableError",
    "describe_failure",
    "mongodb_location",
    "qdrant_location",
    "redis_location",
    "require_store_urls",
    "wait_for_stores",
]

_LOG = logging.getLogger("meshgate.startup")


def require_store_urls(settings: Settings, *, with_qdrant: bool = True) -> None:
    """Without --dev every store needs its URL: one missing stops the command (exit 2)."""
    missing = [
        name
        for name, value in (
            ("MESHGATE_MONGODB_URI", settings.mongodb_uri),
            ("MESHGATE_REDIS_URL", settings.redis_url),
            ("MESHGATE_QDRANT_URL", settings.qdrant_url if with_qdrant else ""),
        )
        if value is None
    ]
    if not missing:
        return
    names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    raise SettingsError(
        f"{names} {'is' if len(missing) == 1 else 'are'} not set: every store needs its URL"
        " (docs/operations.md#configuration); `meshgate serve --dev` runs embedded engines"
        " on this machine instead, for development only"
    )


def _with_port(host: str, default_port: int) -> str:
    """`host:port`, the default port added when the host names none (a socket path stays)."""
    has_port = ":" in host and host.rsplit(":", 1)[1].isdigit()
    return host if has_port or host.startswith("/") else f"{host}:{default_port}"


def _hosts(netloc: str, default_port: int) -> str:
    """`host:port[,host:port]` of a URL's network location, credentials dropped."""
    hosts = unquote(netloc.rpartition("@")[2])
    return ",".join(_with_port(host, default_port) for host in hosts.split(",") if host)


def mongodb_location(uri: str) -> str:
    """Where a MongoDB URI points: its hosts (an SRV record's name), never its credentials."""
    scheme, _, rest = uri.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if scheme == "mongodb+srv":
        return f"{netloc.rpartition('@')[2]} (DNS SRV record)"
    return _hosts(netloc, 27017)


def redis_location(url: str, *, cluster: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        where = parts.path
    else:
        where = _hosts(parts.netloc, 6379) + (" (TLS)" if parts.scheme == "rediss" else "")
    return f"{where} (a node of the Redis Cluster)" if cluster else where


def qdrant_location(url: str) -> str:
    """The URL's host with the gRPC port the client speaks to (qdrant-client's default)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = (parts.hostname or "").strip("[]")
    return f"{host}:6334 (gRPC; REST at {_hosts(parts.netloc, 6333)})"


_MEANINGS = (
    # asyncio's "Connect call failed" carries the errno: 111 is ECONNREFUSED
    (("connection refused", "[errno 111]", "connectionrefusederror"), "connection refused"),
    (
        ("name or service not known", "nodename nor servname", "name resolution", "getaddrinfo"),
        "host name not resolved",
    ),
    (
        ("authentication failed", "wrongpass", "invalid username-password", "noauth"),
        "authentication failed",
    ),
    (
        ("certificate verify failed", "[ssl", "ssl handshake", "tls handshake", "wrong version"),
        "TLS handshake failed",
    ),
    (("no route to host", "network is unreachable"), "no route to the host"),
    (("timed out", "timeout", "deadline"), "no answer in time"),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_failure(exc: BaseException) -> str:
    """What went wrong, in a few words an operator recognises, with no URL, no host list
    and no credentials from the driver's message (its exception type when unrecognised)."""
    text = " ".join(f"{type(e).__name__} {e}" for e in _chain(exc)).lower()
    for needles, meaning in _MEANINGS:
        if any(needle in text for needle in needles):
            return meaning
    return type(exc).__name__


class StoreUnreachableError(EnvironmentFailure):
    """A store did not answer within the start-up wait (exit code 3)."""


@dataclass(frozen=True, slots=True)
class StoreCheck:
    store: str  # MongoDB, Redis, Qdrant
    where: str
    tried: str  # what one attempt does: "ping", "PING", ...
    probe: Callable[[], Awaitable[object]]


@dataclass
class _Progress:
    attempts: int = 0
    reason: str = ""
    logged_at: float | None = None


async def wait_for_stores(
    checks: Sequence[StoreCheck],
    *,
    bound_s: float,
    log_every_s: float,
    attempt_timeout_s: float,
    retry_every_s: float = 1.0,
) -> None:
    """Returns once every store has answered; StoreUnreachableError past `bound_s`."""
    started = time.monotonic()
    progress = {check.store: _Progress() for check in checks}
    pending = list(checks)

    async def attempt(check: StoreCheck) -> str | None:
        try:
            await asyncio.wait_for(check.probe(), attempt_timeout_s)
        except Exception as exc:  # any failure means not yet; only its meaning is kept
            return describe_failure(exc)
        return None

    while True:
        failures = await asyncio.gather(*(attempt(check) for check in pending))
        now = time.monotonic()
        waited = now - started
        still: list[StoreCheck] = []
        for check, failure in zip(pending, failures, strict=True):
            state = progress[check.store]
            state.attempts += 1
            if failure is None:
                if state.logged_at is not None:
                    _LOG.info("%s at %s answers after %.1fs", check.store, check.where, waited)
                continue
            still.append(check)
            state.reason = failure
            if bound_s <= 0:
                continue  # failing fast: the one error line says it all
            if state.logged_at is None:
                _LOG.warning(
                    "%s at %s is unreachable (%s: %s); waiting up to %gs for it"
                    " (MESHGATE_STARTUP_WAIT_S)",
                    check.store,
                    check.where,
                    check.tried,
                    failure,
                    bound_s,
                )
                state.logged_at = now
            elif now - state.logged_at >= log_every_s:
                _LOG.warning(
                    "%s at %s is still unreachable after %.0fs (%s: %s)",
                    check.store,
                    check.where,
                    waited,
                    check.tried,
                    failure,
                )
                state.logged_at = now
        pending = still
        if not pending:
            return
        if waited >= bound_s:
            raise StoreUnreachableError(
                "; ".join(
                    f"{check.store} at {check.where} is unreachable:"
                    f" {progress[check.store].reason} ({check.tried},"
                    f" {_attempts(progress[check.store].attempts)} over {waited:.0f}s;"
                    " MESHGATE_STARTUP_WAIT_S sets how long to wait)"
                    for check in pending
                )
            )
        await asyncio.sleep(min(retry_every_s, bound_s - waited))


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"
