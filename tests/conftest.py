"""Shared fixtures: a real redis-server, MongoDB over the wire, a real mTLS gRPC server.

- Redis: a `redis-server` process on a free loopback port (`make test` installs
  Debian's package when missing). MESHGATE_TEST_REDIS_SERVER names another binary.
- MongoDB: the embedded engine (server/embedded.py), a process of its own, over the wire
  protocol, or a real MongoDB when MESHGATE_TEST_MONGODB_URI is set (a fresh database per
  session).
- gRPC: `create_server` on 127.0.0.1:0 with a throwaway PKI; clients connect
  over TLS with client certificates, exactly as services in the mesh do.

The helpers behind these fixtures live in tests/support/.

Tiers: tests/unit/ is the unit tier (`make test-unit`: in-process, with the fakes of
tests/support/fakes; no process, no socket, enforced by the runtest hooks below),
tests/contracts/ runs each fake and its real store through the same cases, and every
other folder is the integration tier. `make test` runs them all.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from certs.dev_pki import INTERNAL_ID
from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.embedded import EmbeddedMongo
from server.settings import Secret, Settings
from storage.core.checkpoints import NoteSigner, generate_key
from tests.support.clients import client_credentials
from tests.support.driver_sockets import ignore_driver_sockets, register_mongodb_uri
from tests.support.log_guard import NEVER_LOGGED, FormattedLines, leaked
from tests.support.pki import PROXY_ID, Pki, issue_test_pki
from tests.support.processes import RedisServer
from tests.support.redis_cluster import LocalRedisCluster, RedisEndpoint
from tests.support.servers import BulkServer, serving
from tests.support.tenants import MakeTenant, Tenant, create_tenant
from tests.support.unit_tier import guarded, mark_tier
from tests.support.webhooks import WEBHOOK_TEST_SCHEDULE, Receiver


@pytest.hookimpl(trylast=True)  # after pytest's own unraisablehook is installed
def pytest_configure(config: pytest.Config) -> None:
    ignore_driver_sockets()  # tests/support/driver_sockets.py


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        mark_tier(item)
    # the unit tier first, in its order: an integration fixture of session scope (a MongoDB
    # client, its monitor connecting in the background) does not exist yet, so nothing the
    # guard refuses runs beside a unit test that did not ask for it
    items.sort(key=lambda item: item.get_closest_marker("unit") is None)


# every phase of a unit-tier test runs guarded, so a fixture of any scope that it asks for
# (a session's redis-server, say) is refused too (tests/support/unit_tier.py)
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with guarded(item):
        return (yield)


@pytest.fixture(scope="session", autouse=True)
def no_secret_or_internal_id_in_any_log() -> Iterator[None]:
    """Formats every log record of the whole session as the server does, then checks that no
    secret and no internal_id created by any test appears in any line (nor in the logs of the
    server processes the suite started)."""
    capture = FormattedLines()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(capture)
    root.setLevel(previous)
    found = leaked(capture.lines)
    assert not found, f"secrets or internal ids in logs: {found}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.on_free_port(tmp_path_factory.mktemp("redis"))
    except RuntimeError as missing:
        pytest.fail(str(missing))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of 3 primaries with a replica each; started by the first test that
    asks for it (the cluster tests only)."""
    try:
        cluster = LocalRedisCluster.in_directory(tmp_path_factory.mktemp("redis-cluster"))
    except RuntimeError as missing:
        pytest.fail(str(missing))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def redis_endpoint(request: pytest.FixtureRequest) -> RedisEndpoint:
    """The same test on the session's single redis-server and on the Redis Cluster."""
    if request.param == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.endpoint
    single: RedisServer = request.getfixturevalue("redis_server")
    return RedisEndpoint(url=single.url, cluster=False)


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB when MESHGATE_TEST_MONGODB_URI says so; else the embedded engine, in a
    process of its own as `meshgate serve --dev` runs it (chosen here, explicitly)."""
    real = os.environ.get("MESHGATE_TEST_MONGODB_URI")
    if real:
        register_mongodb_uri(real)
        yield real
        return
    engine = EmbeddedMongo(data_dir=None, output=tmp_path_factory.mktemp("mongo") / "engine.log")
    uri = engine.start()
    register_mongodb_uri(uri)
    yield uri
    engine.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return issue_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (allow-listed in the test settings)."""
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def checkpoint_signers() -> tuple[NoteSigner, NoteSigner]:
    """The session server's audit checkpoint keys: the one that signs, and a previous one
    it only verifies with (as after a rotation)."""
    signers = generate_key("audit.meshgate.test"), generate_key("audit.meshgate.test")
    NEVER_LOGGED.update(signer.encoded() for signer in signers)
    return signers


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's file sink for audit checkpoints."""
    return tmp_path_factory.mktemp("checkpoints")


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
    checkpoint_signers: tuple[NoteSigner, NoteSigner],
    checkpoint_dir: Path,
) -> Settings:
    current, previous = checkpoint_signers
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
        audit_checkpoint_keys=Secret(f"{current.encoded()}\n{previous.verifier().encoded()}"),
        audit_checkpoint_sinks=("log", f"file:{checkpoint_dir}"),
    )


@pytest.fixture(scope="session")
async def backends(settings: Settings) -> AsyncIterator[Backends]:
    opened = await open_backends(settings)
    yield opened
    if os.environ.get("MESHGATE_TEST_MONGODB_URI"):
        await opened.mongo.database.client.drop_database(settings.mongodb_database)
    await opened.close()


@pytest.fixture(scope="session")
async def server(settings: Settings, backends: Backends) -> AsyncIterator[RunningServer]:
    running = await create_server(settings, backends)
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="session")
async def channel(server: RunningServer, pki: Pki) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.secure_channel(f"localhost:{server.port}", client_credentials(pki)) as ch:
        yield ch


@pytest.fixture
def make_tenant(backends: Backends, channel: grpc.aio.Channel, server: RunningServer) -> MakeTenant:
    async def make(environment: str = "development", plan: str = "enterprise") -> Tenant:
        return await create_tenant(backends, channel, environment=environment, plan=plan)

    return make


@pytest.fixture
async def tenant(make_tenant: MakeTenant) -> Tenant:
    return await make_tenant()


@pytest.fixture(scope="module")
async def bulk_server(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BulkServer]:
    """A server of its own on a database of its own (and an in-memory Qdrant of its own),
    for tests that store thousands of items (on a real MongoDB the database is dropped
    afterwards; the embedded engine's data goes with the session). On the
    embedded engine a filtered ListDocuments reads every document of the collection
    (docs/embedded-mongodb.md): bulk left in the session's database made every later
    filtered list slower (the filter tests of a full run 12 times as long)."""
    own = replace(
        settings,
        mongodb_database=f"{settings.mongodb_database}_bulk_{secrets.token_hex(3)}",
        data_dir=tmp_path_factory.mktemp("bulk"),
        metrics_listen="",
    )
    async with serving(own, pki) as (running, backends, channel):
        yield BulkServer(running, backends, channel)
        if os.environ.get("MESHGATE_TEST_MONGODB_URI"):  # the embedded engine's goes with it
            await backends.mongo.database.client.drop_database(own.mongodb_database)
