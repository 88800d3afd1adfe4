"""`meshgate backup` and `meshgate restore` against the running server, over mTLS."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from server.app import RunningServer
from server.cli import main
from tests.support.namespace_clients import Docs, Hooks, doc
from tests.support.pki import Pki
from tests.support.tenants import Tenant
from tests.support.webhooks import Receiver


def cli_args(server: RunningServer, pki: Pki, key_file: Path) -> list[str]:
    return [
        "--server",
        f"localhost:{server.port}",
        "--key-file",
        str(key_file),
        "--ca",
        str(pki.path("ca.pem")),
        "--cert",
        str(pki.path("client.pem")),
        "--cert-key",
        str(pki.path("client-key.pem")),
    ]


async def test_backup_then_restore_through_the_command(
    tenant: Tenant,
    server: RunningServer,
    pki: Pki,
    receiver: Receiver,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = await tenant.namespace()
    for i in range(30):
        await Docs(tenant, source.name).create(doc(f"d{i:02d}", {"i": i}, kind="cli"))
    await Hooks(tenant, source.name).create(receiver.url("/cli"))
    key_file = tmp_path / "admin-key"
    key_file.write_text(tenant.admin + "\n")
    out = tmp_path / "orders.mgbackup"
    common = cli_args(server, pki, key_file)

    code = await asyncio.to_thread(
        main, ["backup", "--namespace", source.name, "--out", str(out), *common]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "30 documents" in printed.out
    assert printed.err == ""  # no progress bar: stderr is not a terminal here
    manifest = json.loads(gzip.decompress(out.read_bytes()).splitlines()[0])
    assert manifest["format_version"] == 1 and manifest["counts"]["documents"] == 30
    assert not out.with_name(out.name + ".partial").exists()

    target = await tenant.namespace()
    code = await asyncio.to_thread(main, ["restore", str(out), "--namespace", target.name, *common])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"restored into {target.namespace_id}: 30 documents" in printed.out
    assert "new secret: whsec_" in printed.out
    assert await Docs(tenant, target.name).list_ids() == [f"d{i:02d}" for i in range(30)]

    # a second restore into the now full namespace of another file is refused, readably
    other = await tenant.namespace()
    await Docs(tenant, other.name).create(doc("x", {}))
    await asyncio.to_thread(
        main, ["backup", "--namespace", other.name, "--out", str(tmp_path / "o"), *common]
    )
    code = await asyncio.to_thread(
        main, ["restore", str(tmp_path / "o"), "--namespace", target.name, *common]
    )
    assert code == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


async def test_a_bad_key_leaves_no_file(
    server: RunningServer, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "bad-key"
    key_file.write_text("mg_dev_not_a_key")
    out = tmp_path / "never"
    code = await asyncio.to_thread(
        main,
        ["backup", "--namespace", "x", "--out", str(out), *cli_args(server, pki, key_file)],
    )
    assert code == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("never.partial").exists()
