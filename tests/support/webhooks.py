"""A real webhook receiver for tests, and the two signature checks it applies.

The receiver is an HTTP server on 127.0.0.1 in its own thread. Endpoints are
paths; each has the secrets to verify with, scripted responses (status and
headers) for its first requests, then 200, and an optional delay. A request
whose signature does not verify is answered 400.

Every signature is checked twice, and both must accept (`check_signature`):

- `verify_standard_webhook`, written here from the Standard Webhooks
  specification (it does not import the server's signer): the signed content is
  `webhook-id.webhook-timestamp.body`, HMAC-SHA256 keyed with the base64-decoded
  part of the `whsec_` secret, and `webhook-signature` holds space-separated
  `v1,<base64>` entries, any of which may match. Timestamps more than five
  minutes away are refused.
- the specification's reference implementation, PyPI's `standardwebhooks`,
  as a receiver in another team would run it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as random_tokens
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

__all__ = [
    "TOLERANCE_S",
    "WEBHOOK_TEST_SCHEDULE",
    "Endpoint",
    "Received",
    "Receiver",
    "SignatureCheck",
    "check_signature",
    "fake_dns",
    "new_endpoint_path",
    "verify_standard_webhook",
    "verify_with_reference",
]

TOLERANCE_S = 300
# delays after each failed webhook attempt in the test settings: 5 attempts within about a second
WEBHOOK_TEST_SCHEDULE = (0.1, 0.2, 0.2, 0.3)


def verify_standard_webhook(secrets: Sequence[str], headers: dict[str, str], body: bytes) -> bool:
    """The receiver-side check of the Standard Webhooks specification."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not msg_id or not timestamp.isdigit() or not signatures:
        return False
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return False
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    for secret in secrets:
        key = base64.b64decode(secret[len("whsec_") :])
        expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
        for entry in signatures.split(" "):
            version, _, signature = entry.partition(",")
            if version == "v1" and hmac.compare_digest(signature.encode(), expected):
                return True
    return False


def verify_with_reference(secrets: Sequence[str], headers: dict[str, str], body: bytes) -> bool:
    """The same check by the reference implementation: any of `secrets` may have signed."""
    for secret in secrets:
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
            return True
        except (WebhookVerificationError, ValueError):  # ValueError: malformed header or body
            continue
    return False


@dataclass(frozen=True)
class SignatureCheck:
    """What each verifier said about one request."""

    specification: bool  # verify_standard_webhook
    reference: bool  # the standardwebhooks package

    @property
    def valid(self) -> bool:
        """Both accept."""
        return self.specification and self.reference

    @property
    def refused(self) -> bool:
        """Both refuse."""
        return not self.specification and not self.reference


def check_signature(secrets: Sequence[str], headers: dict[str, str], body: bytes) -> SignatureCheck:
    """Verify a delivery both ways: assert `.valid` (or `.refused`), never one verifier."""
    return SignatureCheck(
        specification=verify_standard_webhook(secrets, headers, body),
        reference=verify_with_reference(secrets, headers, body),
    )


def fake_dns(table: dict[str, list[str]]) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver for the webhook sender answering from `table` (OSError for other names)."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


def new_endpoint_path() -> str:
    """A receiver path no other test uses."""
    return f"/hooks/{random_tokens.token_hex(4)}"


@dataclass
class Received:
    path: str
    webhook_id: str
    timestamp: int
    signatures: list[str]
    payload: dict[str, Any]
    signature: SignatureCheck
    status: int
    arrived: float  # time.monotonic()
    headers: dict[str, str]
    body: bytes

    @property
    def valid(self) -> bool:
        """Both verifiers accepted the signature."""
        return self.signature.valid


@dataclass
class Endpoint:
    secrets: list[str] = field(default_factory=list)
    script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    delay_s: float = 0.0


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.received: list[Received] = []
        self.in_flight = 0  # requests read but not answered yet
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.in_flight += 1
                try:
                    status, extra = receiver._answer(self.path, headers, body)
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # a sender that went away (killed mid-request) is part of the tests

        self._server = Server(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def endpoint(self, path: str, *secrets: str) -> Endpoint:
        """The endpoint at `path`, which from now on also accepts `secrets`."""
        with self._lock:
            endpoint = self.endpoints.setdefault(path, Endpoint())
            endpoint.secrets.extend(secrets)
            return endpoint

    def script(self, path: str, *responses: int | tuple[int, dict[str, str]]) -> None:
        """The answers to the next requests at `path` (a status, or status and headers)."""
        endpoint = self.endpoint(path)
        with self._lock:
            for response in responses:
                endpoint.script.append(response if isinstance(response, tuple) else (response, {}))

    def _answer(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str]]:
        with self._lock:
            endpoint = self.endpoints.setdefault(path, Endpoint())
            status, extra = endpoint.script.popleft() if endpoint.script else (200, {})
            secrets = list(endpoint.secrets)
            delay = endpoint.delay_s
        signature = check_signature(secrets, headers, body)
        if not signature.valid:
            status, extra = 400, {}
        if delay:
            time.sleep(delay)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        with self._lock:
            self.received.append(
                Received(
                    path=path,
                    webhook_id=headers.get("webhook-id", ""),
                    timestamp=int(headers.get("webhook-timestamp", "0") or 0),
                    signatures=headers.get("webhook-signature", "").split(" "),
                    payload=payload,
                    signature=signature,
                    status=status,
                    arrived=time.monotonic(),
                    headers=headers,
                    body=body,
                )
            )
        return status, extra

    def requests(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def delivered(self, path: str) -> dict[str, Received]:
        """Accepted (2xx) requests by webhook-id: duplicates of one event collapse."""
        out: dict[str, Received] = {}
        for request in self.requests(path):
            if request.valid and 200 <= request.status < 300:
                out.setdefault(request.webhook_id, request)
        return out

    async def delivered_at_least(self, path: str, n: int) -> bool:
        """A predicate for `eventually`: `path` accepted `n` distinct events."""
        return len(self.delivered(path)) >= n
