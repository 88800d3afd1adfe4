"""Signed audit checkpoints through the live server: a rewrite of MongoDB's events and
Redis's anchor together, which the anchor alone cannot see, is caught by a checkpoint kept
from before (through VerifyAuditChain and through `meshgate audit verify`); checkpoints
signed by an unknown key, altered, or of another organization are refused."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
from meshgate.v1 import audit_service_pb2, audit_service_pb2_grpc

from server.app import RunningServer
from server.backends import Backends
from server.cli import main
from storage.audit.anchor import AuditAnchor
from storage.audit.chain import event_hash
from storage.core.checkpoints import Checkpoint, NoteSigner, generate_key
from tests.server.test_backup_cli import cli_args
from tests.support.clients import auth, trailers_of
from tests.support.error_details import details_of
from tests.support.pki import Pki
from tests.support.tenants import MakeTenant, Tenant, internal_id_of

VERIFY = audit_service_pb2.VerifyAuditChainRequest


async def rewrite_both_stores(backends: Backends, organization_id: str, sequence: int) -> None:
    """What an insider with write access to MongoDB and Redis does: edit the event at
    `sequence`, recompute every hash after it (the chain has no secret), fix each block's
    bookkeeping, and move the anchored head's hash to the new one."""
    blocks = backends.mongo.database["audit_blocks"]
    previous = ""
    async for block in blocks.find({"organization_id": organization_id}).sort("first_sequence"):
        events = block["events"]
        for event in events:
            if event["sequence"] == sequence:
                event["outcome"] = "PERMISSION_DENIED"
            if event["sequence"] >= sequence:
                event["previous_hash"] = previous
                event["hash"] = event_hash(event)
            previous = event["hash"]
        await blocks.update_one(
            {"_id": block["_id"]}, {"$set": {"events": events, "last_hash": previous}}
        )
    await backends.redis.hset(AuditAnchor.key(organization_id), "hash", previous)


async def test_a_kept_checkpoint_catches_mongodb_and_redis_rewritten_together(
    tenant: Tenant,
    server: RunningServer,
    backends: Backends,
    checkpoint_dir: Path,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    md = auth(tenant.admin)
    for _ in range(3):
        await tenant.namespace()
    first = await audit.VerifyAuditChain(VERIFY(), metadata=md)
    assert first.intact and first.checkpoint  # signed on demand: the caller keeps it
    # the replica's round signs the heads it wrote and publishes them (log and file)
    checkpoints = server.components.checkpoints
    assert checkpoints is not None
    with caplog.at_level(logging.INFO, logger="meshgate.audit.checkpoints"):
        await checkpoints.publish_written()
    logged = {
        getattr(r, "organization_id", ""): getattr(r, "checkpoint", "")
        for r in caplog.records
        if r.name == "meshgate.audit.checkpoints"
    }
    published = (checkpoint_dir / f"{tenant.organization_id}.checkpoint").read_text()
    print(f"\nthe file sink's checkpoint:\n{published}")
    assert published.startswith(f"meshgate/audit/{tenant.organization_id}\n")
    assert logged[tenant.organization_id] == published
    assert (
        await internal_id_of(tenant.organization_id, backends) not in published + first.checkpoint
    )
    kept = tmp_path / "kept.checkpoint"
    kept.write_text(published)
    published_at = int(published.split("\n")[1])

    for _ in range(2):  # the chain grows: it still extends both checkpoints
        await tenant.namespace()
    for note in (first.checkpoint, published):
        later = await audit.VerifyAuditChain(VERIFY(checkpoint=note), metadata=md)
        assert later.intact and later.checkpoint_holds and later.last_sequence > first.last_sequence

    await server.components.audit.flush()  # nothing left queued against the old head
    await rewrite_both_stores(backends, tenant.organization_id, sequence=2)
    server.components.audit._heads.pop(tenant.organization_id, None)  # a restarted writer
    blind = await audit.VerifyAuditChain(VERIFY(), metadata=md)
    assert blind.intact  # the anchor was rewritten too: without a checkpoint, nothing shows
    caught = await audit.VerifyAuditChain(VERIFY(checkpoint=first.checkpoint), metadata=md)
    assert not caught.intact and not caught.checkpoint_holds and not caught.checkpoint
    assert caught.first_broken_sequence == first.last_sequence
    assert caught.first_broken_event_id.startswith("aud_")
    assert "kept checkpoint's hash: the chain was rewritten" in caught.reason

    # `meshgate audit verify` with the checkpoint the file sink published
    key_file = tmp_path / "admin-key"
    key_file.write_text(tenant.admin)
    command = ["audit", "verify", "--checkpoint", str(kept), *cli_args(server, pki, key_file)]
    code = await asyncio.to_thread(main, command)
    printed = capsys.readouterr().out
    print(printed)
    assert code == 1 and "kept checkpoint: DOES NOT HOLD" in printed
    assert f"NOT INTACT at sequence {published_at} (event aud_" in printed


async def test_checkpoints_signed_by_an_unknown_key_altered_or_foreign_are_refused(
    tenant: Tenant,
    make_tenant: MakeTenant,
    server: RunningServer,
    checkpoint_signers: tuple[NoteSigner, NoteSigner],
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = audit_service_pb2_grpc.AuditServiceStub(tenant.channel)
    md = auth(tenant.admin)
    await tenant.namespace()
    verdict = await audit.VerifyAuditChain(VERIFY(), metadata=md)
    head = Checkpoint(tenant.organization_id, verdict.last_sequence, verdict.last_hash).text()
    _, previous = checkpoint_signers
    other = await make_tenant()
    await other.namespace()
    foreign = await audit_service_pb2_grpc.AuditServiceStub(other.channel).VerifyAuditChain(
        VERIFY(), metadata=auth(other.admin)
    )
    size = f"\n{verdict.last_sequence}\n"
    refused = {
        "signed by no key of this server": generate_key("audit.meshgate.test").sign(head),
        "the checkpoint was altered": verdict.checkpoint.replace(
            size, f"\n{verdict.last_sequence + 1}\n"
        ),
        "not this organization's chain": foreign.checkpoint,
        "a checkpoint is a text, a blank line and signature lines": head,
    }
    for message, note in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await audit.VerifyAuditChain(VERIFY(checkpoint=note), metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
        details = details_of(trailers_of(info.value))
        assert details.reason == "FIELD_INVALID" and details.fields == ["checkpoint"]
    # a key rotated out of signing still verifies what it signed
    rotated = await audit.VerifyAuditChain(VERIFY(checkpoint=previous.sign(head)), metadata=md)
    assert rotated.intact and rotated.checkpoint_holds
    # the command line says so too, and keeps the new checkpoint with --save
    unknown = tmp_path / "unknown.checkpoint"
    unknown.write_text(refused["signed by no key of this server"])
    key_file = tmp_path / "admin-key"
    key_file.write_text(tenant.admin)
    saved = tmp_path / "new.checkpoint"
    args = cli_args(server, pki, key_file)
    assert (
        await asyncio.to_thread(main, ["audit", "verify", "--checkpoint", str(unknown), *args]) == 2
    )
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["audit", "verify", "--save", str(saved), *args]) == 0
    assert saved.read_text().startswith(f"meshgate/audit/{tenant.organization_id}\n")
