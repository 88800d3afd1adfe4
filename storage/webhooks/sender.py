"""Sending one signed webhook request (Standard Webhooks), the outbound edge of meshgate.

Headers: `webhook-id` (the event id: the same on every attempt),
`webhook-timestamp` (seconds since the epoch, at the attempt) and
`webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed
with the base64-decoded part of the `whsec_` secret; one signature per live
secret, space separated, during a rotation grace period. When the event's cause
was traced, `traceparent` (and `tracestate`) of the submitting call go along.

Transport rules: the target is vetted (storage/webhooks/targets.py) and the TCP
connection goes to exactly the vetted address, while the URL's host name is
kept for the Host header, TLS SNI and certificate verification (an httpcore
network backend pinned to the address). Redirects are never followed, proxies
from the environment are ignored, the whole attempt has one deadline, and at
most `max_response_bytes` of the response body are read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import time
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpcore

from storage.webhooks.targets import (
    IPAddress,
    Resolver,
    TargetPolicy,
    TargetRefusedError,
    parse_webhook_url,
    system_resolver,
    vet_target,
)

__all__ = ["SendResult", "WebhookSender", "sign", "signature_header"]

USER_AGENT = "meshgate-webhooks/1"
MAX_RETRY_AFTER_S = 24 * 3600.0


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `msg_id.timestamp.body`, keyed by the decoded secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(secrets: Sequence[str], *, msg_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets)


@dataclass(frozen=True, slots=True)
class SendResult:
    status_code: int  # 0 when no response arrived
    error: str  # empty on success; safe to show to the webhook's owner
    duration_ms: int
    retry_after_s: float | None = None
    # the target was refused by policy before any connection was made
    refused: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to one vetted address whatever host name the URL carries."""

    def __init__(self, address: IPAddress) -> None:
        self._address = str(address)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_tcp(
            self._address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(out) < 8:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _describe(exc: BaseException, timeout_s: float) -> str:
    """A short, safe description of a transport failure (never the exception text)."""
    chain = _chain(exc)
    if any(isinstance(e, TimeoutError | httpcore.TimeoutException) for e in chain):
        return f"timed out after {timeout_s:g}s"
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "TLS handshake failed"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if isinstance(exc, httpcore.ConnectError):
        return "connection failed"
    if isinstance(exc, httpcore.RemoteProtocolError | httpcore.LocalProtocolError):
        return "HTTP protocol error"
    if isinstance(exc, httpcore.NetworkError | OSError):
        return "network error"
    return "request failed"


class WebhookSender:
    def __init__(
        self,
        *,
        policy: TargetPolicy,
        timeout_s: float,
        max_response_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._policy = policy
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._resolver = resolver

    async def vet(self, url: str) -> None:
        """Refuse a URL webhooks may not use (TargetRefusedError, an INVALID_ARGUMENT)."""
        await vet_target(parse_webhook_url(url), policy=self._policy, resolver=self._resolver)

    async def send(
        self,
        *,
        url: str,
        msg_id: str,
        body: bytes,
        secrets: Sequence[str],
        trace: Mapping[str, str] | None = None,
    ) -> SendResult:
        """One attempt, resolution included, within one deadline; never raises.

        `trace` (W3C `traceparent`, `tracestate`) goes out as headers: the receiver's
        handling joins the trace of the call that caused the event."""
        started = time.monotonic()

        def result(code: int, error: str, **extra: typing.Any) -> SendResult:
            return SendResult(code, error, int((time.monotonic() - started) * 1000), **extra)

        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._attempt(url, msg_id, body, secrets, result, trace=trace or {})
        except TargetRefusedError as exc:
            return result(0, f"refused: {exc.message}", refused=True)
        except Exception as exc:  # transport failures become a failed attempt, never a crash
            return result(0, _describe(exc, self._timeout_s))

    async def _attempt(
        self,
        url: str,
        msg_id: str,
        body: bytes,
        secrets: Sequence[str],
        result: typing.Callable[..., SendResult],
        *,
        trace: Mapping[str, str],
    ) -> SendResult:
        target = parse_webhook_url(url)
        addresses = await vet_target(target, policy=self._policy, resolver=self._resolver)
        timestamp = int(time.time())
        headers = [
            (b"content-type", b"application/json"),
            (b"user-agent", USER_AGENT.encode()),
            (b"webhook-id", msg_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (
                b"webhook-signature",
                signature_header(secrets, msg_id=msg_id, timestamp=timestamp, body=body).encode(),
            ),
            *((name.encode(), value.encode()) for name, value in trace.items()),
        ]
        error = "connection failed"
        for address in addresses:
            try:
                code, retry_after = await self._post(address, url, headers, body)
            except httpcore.ConnectError as exc:
                error = _describe(exc, self._timeout_s)
                continue  # the next resolved address, if any
            if 200 <= code < 300:
                return result(code, "")
            if 300 <= code < 400:
                return result(code, f"HTTP {code}: redirects are not followed")
            return result(code, f"HTTP {code}", retry_after_s=retry_after)
        return result(0, error)

    async def _post(
        self,
        address: IPAddress,
        url: str,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
    ) -> tuple[int, float | None]:
        timeouts = {
            "connect": self._timeout_s,
            "read": self._timeout_s,
            "write": self._timeout_s,
            "pool": self._timeout_s,
        }
        async with (
            httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context,
                network_backend=_PinnedBackend(address),
                max_connections=1,
                retries=0,
            ) as pool,
            pool.stream(
                "POST",
                url,
                headers=list(headers),
                content=body,
                extensions={"timeout": timeouts},
            ) as response,
        ):
            read = 0
            async for chunk in response.aiter_stream():
                read += len(chunk)
                if read >= self._max_response_bytes:
                    break  # the rest is not read; the connection is closed with the pool
            retry_after = None
            for name, value in response.headers:
                if name.lower() == b"retry-after":
                    retry_after = retry_after_seconds(value.decode("latin-1"))
            return response.status, retry_after
