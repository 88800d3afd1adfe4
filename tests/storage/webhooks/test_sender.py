"""The signed webhook sender: signatures, pinning the vetted address, transport limits."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from storage.webhooks.sender import WebhookSender, retry_after_seconds, sign
from storage.webhooks.targets import (
    REFUSED_TARGET,
    TargetPolicy,
)
from tests.support.pki import Pki
from tests.support.webhooks import Receiver, check_signature, fake_dns


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    """The example of the Standard Webhooks specification and its reference libraries."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    reference = Webhook(secret).sign(
        msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=datetime.fromtimestamp(1614265330, UTC),
        data=body.decode(),
    )
    assert signature == reference


def test_retry_after_forms() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("999999") == 24 * 3600.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.fixture
def receiver_for_sender() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


async def test_sender_pins_the_vetted_address_and_keeps_the_host_name(
    receiver_for_sender: Receiver,
) -> None:
    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    receiver_for_sender.endpoint("/pinned", secret)
    sender = WebhookSender(
        policy=TargetPolicy.from_entries(["hooks.test"]),
        timeout_s=2,
        max_response_bytes=1024,
        resolver=fake_dns({"hooks.test": ["127.0.0.1"]}),
    )
    url = f"http://hooks.test:{receiver_for_sender.port}/pinned"
    result = await sender.send(url=url, msg_id="evt_1", body=b'{"a":1}', secrets=[secret])
    assert result.ok and result.error == ""
    (request,) = receiver_for_sender.requests("/pinned")
    assert request.valid
    assert request.headers["host"] == f"hooks.test:{receiver_for_sender.port}"
    assert request.headers["content-type"] == "application/json"


async def test_sender_refuses_a_rebound_name_without_connecting(
    receiver_for_sender: Receiver,
) -> None:
    """The name was public when the webhook was created; now it points at loopback."""
    sender = WebhookSender(
        policy=TargetPolicy(),
        timeout_s=2,
        max_response_bytes=1024,
        resolver=fake_dns({"rebind.example": ["127.0.0.1"]}),
    )
    result = await sender.send(
        url=f"https://rebind.example:{receiver_for_sender.port}/x",
        msg_id="evt_1",
        body=b"{}",
        secrets=["whsec_QUJD"],
    )
    assert result.refused and result.status_code == 0
    assert result.error == f"refused: {REFUSED_TARGET}"
    assert receiver_for_sender.requests("/x") == []
    # a name that does not resolve reads the same in the attempt record: no DNS oracle
    gone = await sender.send(
        url="https://gone.example/x", msg_id="evt_2", body=b"{}", secrets=["whsec_QUJD"]
    )
    assert gone.refused and gone.error == result.error


async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def loopback_sender() -> AsyncIterator[WebhookSender]:
    yield WebhookSender(
        policy=TargetPolicy.from_entries(["127.0.0.1"]), timeout_s=1.0, max_response_bytes=4096
    )


async def test_redirects_are_not_followed_and_bodies_are_capped(
    loopback_sender: WebhookSender,
) -> None:
    hits: list[bytes] = []

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
        try:
            for _ in range(1600):  # 100 MiB if anyone read it all
                writer.write(b"x" * 65536)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()

    server, port = await raw_server(redirect)
    async with server:
        result = await loopback_sender.send(
            url=f"http://127.0.0.1:{port}/r", msg_id="evt_1", body=b"{}", secrets=["whsec_QUJD"]
        )
    assert result.status_code == 302 and "redirects are not followed" in result.error
    assert len(hits) == 1
    server, port = await raw_server(flood)
    async with server:
        result = await loopback_sender.send(
            url=f"http://127.0.0.1:{port}/f", msg_id="evt_1", body=b"{}", secrets=["whsec_QUJD"]
        )
    assert result.ok and result.duration_ms < 1000


async def test_timeouts_and_refused_connections(loopback_sender: WebhookSender) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client gives up
        writer.close()

    server, port = await raw_server(silent)
    async with server:
        result = await loopback_sender.send(
            url=f"http://127.0.0.1:{port}/", msg_id="evt_1", body=b"{}", secrets=["whsec_QUJD"]
        )
        assert result.status_code == 0 and result.error == "timed out after 1s"
        assert 900 <= result.duration_ms < 2000
    server.close()
    result = await loopback_sender.send(
        url=f"http://127.0.0.1:{port}/", msg_id="evt_1", body=b"{}", secrets=["whsec_QUJD"]
    )
    assert result.status_code == 0 and result.error == "connection refused"


async def test_tls_uses_the_host_name_for_sni_and_verification(pki: Pki) -> None:
    """Connected to the pinned 127.0.0.1, the certificate is still checked against `localhost`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.path("server.pem"), pki.path("server-key.pem"))

    async def tls_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    names: list[str] = []

    def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name or "")

    context.sni_callback = on_sni
    server = await asyncio.start_server(tls_ok, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    trusted = ssl.create_default_context(cafile=str(pki.path("ca.pem")))
    trusted.verify_flags &= ~ssl.VERIFY_X509_STRICT  # the dev PKI has no key identifiers
    dns = fake_dns({"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    sender = WebhookSender(
        policy=TargetPolicy.from_entries(["localhost", "other.test"]),
        timeout_s=2,
        max_response_bytes=1024,
        ssl_context=trusted,
        resolver=dns,
    )
    async with server:
        ok = await sender.send(
            url=f"https://localhost:{port}/", msg_id="evt_1", body=b"{}", secrets=["whsec_QUJD"]
        )
        wrong_name = await sender.send(
            url=f"https://other.test:{port}/", msg_id="evt_1", body=b"{}", secrets=["whsec_QUJD"]
        )
    assert ok.status_code == 204, ok
    assert names[0] == "localhost"
    assert wrong_name.status_code == 0 and wrong_name.error == "TLS handshake failed"


def test_receiver_check_is_strict() -> None:
    secret = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    now = int(time.time())
    good = sign(secret, msg_id="m", timestamp=now, body=b"{}")
    headers = {"webhook-id": "m", "webhook-timestamp": str(now), "webhook-signature": good}
    assert check_signature([secret], headers, b"{}").valid
    assert check_signature([secret], headers, b"{ }").refused
    assert check_signature([secret], {**headers, "webhook-id": "n"}, b"{}").refused
    stale = sign(secret, msg_id="m", timestamp=now - 600, body=b"{}")
    assert check_signature(
        [secret],
        {**headers, "webhook-timestamp": str(now - 600), "webhook-signature": stale},
        b"{}",
    ).refused


async def test_a_hanging_resolver_counts_against_the_deadline() -> None:
    async def slow_dns(host: str, port: int) -> list[str]:
        await asyncio.sleep(5)
        return ["93.184.216.34"]

    sender = WebhookSender(
        policy=TargetPolicy(), timeout_s=0.3, max_response_bytes=1024, resolver=slow_dns
    )
    result = await sender.send(
        url="https://slow.example/", msg_id="evt_1", body=b"{}", secrets=["whsec_QUJD"]
    )
    assert result.error == "timed out after 0.3s" and result.duration_ms < 1000
