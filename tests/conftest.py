"""Shared fixtures: a real redis-server, MongoDB over the wire, a real mTLS gRPC server.

- Redis: a `redis-server` process on a free loopback port (`make test` installs
  Debian's package when missing). MESHGATE_TEST_REDIS_SERVER names another binary.
- MongoDB: the embedded engine (server/embedded.py) over the wire protocol, or a real
  MongoDB when MESHGATE_TEST_MONGODB_URI is set (a fresh database per session).
- gRPC: `create_server` on 127.0.0.1:0 with a throwaway PKI; clients connect
  over TLS with client certificates, exactly as services in the mesh do.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import redis
from meshgate.v1 import (
    common_pb2,
    key_service_pb2,
    key_service_pb2_grpc,
    namespace_service_pb2,
    namespace_service_pb2_grpc,
    options_pb2,
)

from certs.dev_pki import CLIENT_ID, INTERNAL_ID, issue, issue_pki, make_ca
from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.bootstrap import bootstrap
from server.embedded import EmbeddedMongo
from server.logs import GuardedJsonFormatter
from server.settings import Secret, Settings
from tests.webhook_receiver import Receiver

PROXY_ID = "spiffe://meshgate.local/proxy/envoy"
# delays after each failed webhook attempt in tests: 5 attempts within about a second
WEBHOOK_TEST_SCHEDULE = (0.1, 0.2, 0.2, 0.3)

# Every API key secret and internal_id the suite creates; none may ever reach a log line.
NEVER_LOGGED: set[str] = set()
# Log files of `meshgate serve` processes the suite started (tests/replica.py adds to it).
PROCESS_LOGS: list[Path] = []


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(GuardedJsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_secret_or_internal_id_in_any_log() -> Iterator[None]:
    """Formats every log record of the whole session as the server does, then checks that no
    secret and no internal_id created by any test appears in any line (nor in the logs of the
    server processes the suite started)."""
    capture = _Capture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(capture)
    root.setLevel(previous)
    texts = capture.lines + [p.read_text(errors="replace") for p in PROCESS_LOGS if p.exists()]
    leaked = sorted({s[:12] for s in NEVER_LOGGED for text in texts if s in text})
    assert not leaked, f"secrets or internal ids in logs: {leaked}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    binary: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = os.environ.get("MESHGATE_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server not found: run the tests through `make test` (installs it as root) "
            "or install Debian's redis-server package"
        )
    server = RedisServer(binary=binary, port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    real = os.environ.get("MESHGATE_TEST_MONGODB_URI")
    if real:
        yield real
        return
    engine = EmbeddedMongo(data_dir=None)
    yield engine.start()
    engine.close()


@dataclass(frozen=True)
class Pki:
    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    issue_pki(root)
    # a sidecar proxy certificate from the same CA, and a client from a foreign CA
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ca_cert = x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())
    ca_key = load_pem_private_key((root / "ca-key.pem").read_bytes(), None)
    proxy = issue(ca_key, ca_cert, common_name="envoy", uris=(PROXY_ID,), server=False)  # type: ignore[arg-type]
    (root / "proxy.pem").write_bytes(proxy.cert_pem)
    (root / "proxy-key.pem").write_bytes(proxy.key_pem)
    _, foreign_key, foreign_cert = make_ca("foreign CA")
    foreign = issue(
        foreign_key, foreign_cert, common_name="intruder", uris=(CLIENT_ID,), server=False
    )
    (root / "foreign.pem").write_bytes(foreign.cert_pem)
    (root / "foreign-key.pem").write_bytes(foreign.key_pem)
    return Pki(root)


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (allow-listed in the test settings)."""
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def database_name() -> str:
    return f"meshgate_test_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def settings(
    pki: Pki,
    mongo_uri: str,
    redis_server: RedisServer,
    database_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("data"),
        tls_cert=pki.path("server.pem"),
        tls_key=pki.path("server-key.pem"),
        tls_client_ca=pki.path("ca.pem"),
        mongodb_uri=Secret(mongo_uri),
        mongodb_database=database_name,
        redis_url=Secret(redis_server.url),
        qdrant_url=os.environ.get("MESHGATE_TEST_QDRANT_URL", ":memory:"),
        internal_peers=frozenset({INTERNAL_ID}),
        trusted_proxies=frozenset({PROXY_ID}),
        key_cache_ttl_s=10.0,
        shutdown_grace_s=2.0,
        metrics_listen="127.0.0.1:0",
        # webhook retries shrunk for tests: 5 attempts within about a second
        webhook_retry_schedule=WEBHOOK_TEST_SCHEDULE,
        webhook_timeout_s=2.0,
        webhook_allowed_hosts=frozenset({"127.0.0.1"}),
        webhook_secret_key=Secret(base64.b64encode(b"k" * 32).decode()),
    )


@pytest.fixture(scope="session")
async def backends(settings: Settings) -> AsyncIterator[Backends]:
    opened = await open_backends(settings)
    yield opened
    if os.environ.get("MESHGATE_TEST_MONGODB_URI"):
        await opened.mongo._client.drop_database(settings.mongodb_database)
    await opened.close()


@pytest.fixture(scope="session")
async def server(settings: Settings, backends: Backends) -> AsyncIterator[RunningServer]:
    running = await create_server(settings, backends)
    yield running
    await running.stop(1.0)


def client_credentials(pki: Pki, identity: str = "client") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read(f"{identity}-key.pem"),
        certificate_chain=pki.read(f"{identity}.pem"),
    )


@pytest.fixture(scope="session")
async def channel(server: RunningServer, pki: Pki) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.secure_channel(f"localhost:{server.port}", client_credentials(pki)) as ch:
        yield ch


def auth(secret: str, namespace: str | None = None, **extra: str) -> tuple[tuple[str, str], ...]:
    md = [("authorization", f"Bearer {secret}")]
    if namespace is not None:
        md.append(("x-namespace", namespace))
    md.extend(extra.items())
    return tuple(md)


@dataclass
class Tenant:
    """One organization with an ADMIN key, and helpers that go through the real API."""

    organization_id: str
    admin_key_id: str
    admin: str
    channel: grpc.aio.Channel
    environment: str = "development"

    @property
    def keys(self) -> key_service_pb2_grpc.KeyServiceStub:
        return key_service_pb2_grpc.KeyServiceStub(self.channel)

    @property
    def namespaces(self) -> namespace_service_pb2_grpc.NamespaceServiceStub:
        return namespace_service_pb2_grpc.NamespaceServiceStub(self.channel)

    async def namespace(self, name: str | None = None) -> namespace_service_pb2.Namespace:
        response = await self.namespaces.CreateNamespace(
            namespace_service_pb2.CreateNamespaceRequest(
                name=name or f"ns-{secrets.token_hex(4)}",
                environment=ENV_PROTO[self.environment],
            ),
            metadata=auth(self.admin),
        )
        return response.namespace

    async def key(
        self,
        *permissions: int,
        namespaces: tuple[str, ...] = (),
        expire_time: object | None = None,
    ) -> key_service_pb2.CreateKeyResponse:
        request = key_service_pb2.CreateKeyRequest(
            name="test key",
            environment=ENV_PROTO[self.environment],
            permissions=list(permissions) or [options_pb2.PERMISSION_READ],
            namespaces=list(namespaces),
        )
        if expire_time is not None:
            request.expire_time.CopyFrom(expire_time)  # type: ignore[arg-type]
        created = await self.keys.CreateKey(request, metadata=auth(self.admin))
        NEVER_LOGGED.add(created.secret)
        return created


ENV_PROTO = {
    "development": common_pb2.ENVIRONMENT_DEVELOPMENT,
    "staging": common_pb2.ENVIRONMENT_STAGING,
    "production": common_pb2.ENVIRONMENT_PRODUCTION,
}


@pytest.fixture
def make_tenant(backends: Backends, channel: grpc.aio.Channel, server: RunningServer):  # type: ignore[no-untyped-def]
    async def make(environment: str = "development", plan: str = "enterprise") -> Tenant:
        result = await bootstrap(
            backends, name=f"org-{secrets.token_hex(3)}", plan=plan, environment=environment
        )
        NEVER_LOGGED.add(result.secret)
        from storage.tenancy.organizations import OrganizationStore

        organization = await OrganizationStore(mongo=backends.mongo).get(result.organization_id)
        NEVER_LOGGED.add(organization.internal_id)
        return Tenant(
            organization_id=result.organization_id,
            admin_key_id=result.key_id,
            admin=result.secret,
            channel=channel,
            environment=environment,
        )

    return make


@pytest.fixture
async def tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return await make_tenant()


async def eventually(predicate, *, timeout_s: float = 5.0, interval_s: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `await predicate()` is true; fails the test after `timeout_s`."""
    started = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


__all__ = [
    "Pki",
    "RedisServer",
    "Tenant",
    "auth",
    "client_credentials",
    "eventually",
    "free_port",
    "replace",
]


async def raw_http2_call(
    server: RunningServer, pki: Pki, path: str, headers: list[tuple[bytes, bytes]]
) -> dict[bytes, bytes]:
    """One unary call written by hand over HTTP/2 + mTLS, for headers a gRPC client refuses
    to send; returns the response's headers and trailers."""
    context = ssl.create_default_context(cafile=str(pki.path("ca.pem")))
    context.load_cert_chain(pki.path("client.pem"), pki.path("client-key.pem"))
    context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=context, server_hostname="localhost"
    )
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    request = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    conn.send_headers(1, request + headers)
    conn.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)  # an empty message
    writer.write(conn.data_to_send())
    seen: dict[bytes, bytes] = {}
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "the server closed the connection without answering"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    seen.update(dict(event.headers))
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return seen
            writer.write(conn.data_to_send())
    finally:
        writer.close()
