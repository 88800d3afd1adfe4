"""`meshgate bootstrap` against the configured MongoDB: first organization and ADMIN key."""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import grpc
from meshgate.v1 import organization_service_pb2, organization_service_pb2_grpc

from server.app import create_server
from server.backends import open_backends
from server.settings import Settings
from tests.support.cli import run_cli
from tests.support.clients import auth, client_credentials
from tests.support.log_guard import NEVER_LOGGED
from tests.support.pki import Pki
from tests.support.processes import replica_env


async def test_bootstrap_command_creates_a_working_admin_key(
    settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    own = replace(settings, mongodb_database=settings.mongodb_database + "_boot")
    env = replica_env(own, 0)
    command = ("bootstrap", "--name", "acme", "--environment", "production")

    async def bootstrap_cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_cli, *command, *extra, env=env)

    first = await bootstrap_cli()
    assert first.returncode == 0, first.stderr
    org_id = re.search(r"organization_id: (org_\w+)", first.stdout)
    secret = re.search(r"secret:\s+(mg_prod_\w+)", first.stdout)
    assert org_id and secret
    NEVER_LOGGED.add(secret.group(1))
    # a second bootstrap on a used store is refused unless asked for
    again = await bootstrap_cli()
    assert again.returncode == 2 and "--another" in again.stderr
    key_file = tmp_path / "admin.key"
    another = await bootstrap_cli("--another", "--key-file", str(key_file))
    assert another.returncode == 0 and "mg_" not in another.stdout
    assert key_file.stat().st_mode & 0o777 == 0o600
    backends = await open_backends(own)
    running = await create_server(own, backends)
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{running.port}", client_credentials(pki)
        ) as ch:
            stub = organization_service_pb2_grpc.OrganizationServiceStub(ch)
            got = await stub.GetOrganization(
                organization_service_pb2.GetOrganizationRequest(), metadata=auth(secret.group(1))
            )
            assert got.organization.organization_id == org_id.group(1)
            assert got.organization.name == "acme"
            other = await stub.GetOrganization(
                organization_service_pb2.GetOrganizationRequest(),
                metadata=auth(key_file.read_text().strip()),
            )
            assert other.organization.organization_id != org_id.group(1)
    finally:
        await running.stop(0)
        await backends.mongo.database.client.drop_database(own.mongodb_database)
        await backends.close()
