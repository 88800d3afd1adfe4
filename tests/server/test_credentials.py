"""Store credentials rotated through their files, without a restart: a real redis-server's
password changed together with MESHGATE_REDIS_URL_FILE, and MESHGATE_MONGODB_URI_FILE
pointed at a second MongoDB engine."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from meshgate.v1 import namespace_service_pb2 as pb
from meshgate.v1 import organization_service_pb2 as org_pb
from meshgate.v1 import organization_service_pb2_grpc as org_grpc
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from server.backends import open_backends
from server.bootstrap import bootstrap
from server.embedded import EmbeddedMongo
from server.settings import Secret, Settings
from tests.support.clients import auth, rpc_error
from tests.support.log_guard import NEVER_LOGGED
from tests.support.pki import Pki
from tests.support.processes import RedisServer
from tests.support.servers import serving
from tests.support.tenants import create_tenant
from tests.support.waiting import eventually


def with_password(url: str, password: str) -> str:
    NEVER_LOGGED.add(password)
    return url.replace("redis://", f"redis://:{password}@")


@pytest.mark.parametrize("change", ["acl", "requirepass"])
async def test_a_redis_password_changed_with_its_file(
    settings: Settings, pki: Pki, tmp_path: Path, change: str
) -> None:
    """`acl`: the new password is added, the file changes, the old password is removed
    once meshgate has switched (the overlap a secret rotation gives): no call fails.
    `requirepass`: the password is replaced at the moment the file changes: a call that
    needs a new Redis connection before meshgate reads the file (at most a second) fails
    as while Redis is down; none fails after the switch."""
    server = RedisServer.on_free_port(tmp_path)
    server.start()
    admin = Redis.from_url(server.url)
    try:
        first, second = secrets.token_hex(12), secrets.token_hex(12)
        await admin.config_set("requirepass", first)  # this connection stays authenticated
        url_file = tmp_path / "redis-url"
        url_file.write_text(with_password(server.url, first) + "\n")
        configured = replace(
            settings,
            redis_url=Secret(with_password(server.url, first)),
            redis_url_file=url_file,
            shutdown_grace_s=1.0,
        )
        async with serving(configured, pki) as (running, backends, channel):
            credentials = running.credentials
            assert credentials is not None
            tenant = await create_tenant(
                backends, channel, environment="development", plan="enterprise"
            )
            namespace = (await tenant.namespace()).namespace_id
            stub = tenant.namespaces
            calls = 0
            failures: list[tuple[float, str]] = []
            switching = asyncio.Event()

            async def caller() -> None:
                nonlocal calls
                while not switching.is_set():
                    try:
                        await stub.GetNamespace(
                            pb.GetNamespaceRequest(), metadata=auth(tenant.admin, namespace)
                        )
                        calls += 1
                    except grpc.aio.AioRpcError as exc:
                        failures.append((time.monotonic(), exc.code().name))
                    try:  # and Redis through the stores' own client
                        await backends.redis.ping()
                    except RedisError as exc:
                        failures.append((time.monotonic(), type(exc).__name__))

            callers = [asyncio.create_task(caller()) for _ in range(4)]
            await eventually(lambda: _true(calls > 50), timeout_s=20)
            # the rotation: the server's password and the mounted file change together
            changed = time.monotonic()
            if change == "acl":
                await admin.execute_command("ACL", "SETUSER", "default", f">{second}")  # type: ignore[no-untyped-call]
            else:
                await admin.config_set("requirepass", second)
            url_file.write_text(with_password(server.url, second) + "\n")
            await eventually(lambda: _true(credentials.switches == 1), timeout_s=10)
            switched = time.monotonic()
            before = calls
            await asyncio.sleep(1.5)  # past the grace: the old connections are closed
            if change == "acl":
                await admin.execute_command("ACL", "SETUSER", "default", f"<{first}")  # type: ignore[no-untyped-call]
            await eventually(lambda: _true(calls > before + 50), timeout_s=20)
            switching.set()
            await asyncio.gather(*callers)
            assert switched - changed < 3.0
            late = [f for f in failures if f[0] > switched]
            assert late == [], f"{len(late)} failures after the switch: {late[:5]}"
            if change == "acl":
                assert failures == [], f"{len(failures)} failed of {calls}: {failures[:5]}"

            # the stores' connections dropped: new ones authenticate with the new password
            await backends.redis.connection_pool.disconnect()  # type: ignore[union-attr]
            await backends.redis.ping()
            for _ in range(20):
                await stub.GetNamespace(
                    pb.GetNamespaceRequest(), metadata=auth(tenant.admin, namespace)
                )
            await eventually(lambda: _true(running.invalidation.live), timeout_s=10)
            stale = Redis.from_url(with_password(server.url, first))
            with pytest.raises((AuthenticationError, ResponseError)):
                await stale.ping()
            await stale.aclose()
    finally:
        await admin.aclose()
        server.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_new_mongodb_uri_in_the_file_sends_new_calls_to_it(
    settings: Settings, pki: Pki, tmp_path: Path, mongo_uri: str
) -> None:
    database = f"meshgate_switch_{secrets.token_hex(4)}"
    other = EmbeddedMongo(data_dir=None)
    other_uri = await asyncio.to_thread(other.start)
    try:
        # an organization that exists only in the second engine
        elsewhere = await open_backends(
            replace(settings, mongodb_uri=Secret(other_uri), mongodb_database=database),
            with_qdrant=False,
        )
        try:
            moved = await bootstrap(
                elsewhere, name="elsewhere", plan="enterprise", environment="development"
            )
            NEVER_LOGGED.add(moved.secret)
        finally:
            await elsewhere.close()
        uri_file = tmp_path / "mongodb-uri"
        uri_file.write_text(mongo_uri)
        configured = replace(
            settings,
            mongodb_uri=Secret(mongo_uri),
            mongodb_uri_file=uri_file,
            mongodb_database=database,
            shutdown_grace_s=1.0,
        )
        async with serving(configured, pki) as (running, backends, channel):
            await create_tenant(backends, channel, environment="development", plan="enterprise")
            organizations = org_grpc.OrganizationServiceStub(channel)
            unknown = await rpc_error(
                organizations.GetOrganization(
                    org_pb.GetOrganizationRequest(), metadata=auth(moved.secret)
                )
            )
            assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED

            uri_file.write_text(other_uri + "\n")
            credentials = running.credentials
            assert credentials is not None
            await eventually(lambda: _true(credentials.switches == 1), timeout_s=10)
            answer = await organizations.GetOrganization(
                org_pb.GetOrganizationRequest(), metadata=auth(moved.secret)
            )
            assert answer.organization.organization_id == moved.organization_id

            # a value that does not connect is refused and the current client stays
            uri_file.write_text("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200")
            await asyncio.sleep(2.5)
            assert credentials.switches == 1
            again = await organizations.GetOrganization(
                org_pb.GetOrganizationRequest(), metadata=auth(moved.secret)
            )
            assert again.organization.organization_id == moved.organization_id
    finally:
        await asyncio.to_thread(other.close)
