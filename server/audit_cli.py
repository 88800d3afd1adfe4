"""`meshgate audit verify` and `meshgate audit keygen`.

`verify` is a client of a running server, like `meshgate backup` (mTLS, an ADMIN key
without a namespace allow-list): it sends a checkpoint kept earlier to
`VerifyAuditChain` and says whether the organization's chain still extends it, or
where it does not. `--save FILE` keeps the new checkpoint the server signs when the
chain is intact, for the next run. Exit status: 0 intact (and the checkpoint holds),
1 not intact, 2 an error (a file, a refused checkpoint, an unreachable server).

`keygen` makes a checkpoint signing key (Go's note format) for
`MESHGATE_AUDIT_CHECKPOINT_KEYS`, and prints its verifier key, which anyone may hold
to check checkpoints without the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc
from meshgate.v1 import audit_service_pb2 as pb
from meshgate.v1 import audit_service_pb2_grpc as pb_grpc

from server.backup_cli import add_client_options, api_key, client_channel
from storage.core.checkpoints import MAX_NOTE_BYTES, CheckpointError, generate_key

__all__ = ["add_audit_commands", "run_audit_command"]


def add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser(
        "audit",
        help="audit chain checkpoints (docs/operations.md#audit)",
        description="Verify an organization's audit chain against signed checkpoints.",
        epilog="A client of a running server over mTLS: docs/operations.md (Audit);\n"
        "exit codes in docs/operations.md (Commands).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = audit.add_subparsers(
        dest="audit_command", required=True, help="verify a chain, or make a signing key"
    )
    verify = commands.add_parser(
        "verify", help="check that the organization's audit chain extends a kept checkpoint"
    )
    verify.add_argument(
        "--checkpoint", type=Path, help="a signed checkpoint kept earlier (none: verify only)"
    )
    verify.add_argument(
        "--save", type=Path, help="write the checkpoint the server signs now to this file"
    )
    add_client_options(verify)
    keygen = commands.add_parser("keygen", help="make a checkpoint signing key")
    keygen.add_argument("name", help="the key's name, e.g. audit.example.com (no spaces, no +)")
    keygen.add_argument(
        "--key-file", type=Path, required=True, help="write the signing key here (mode 0600)"
    )


async def _verify(args: argparse.Namespace) -> int:
    kept = ""
    if args.checkpoint is not None:
        kept = args.checkpoint.read_text()
        if len(kept.encode()) > MAX_NOTE_BYTES:
            raise ValueError(
                f"{args.checkpoint} is larger than a checkpoint ({MAX_NOTE_BYTES} bytes)"
            )
    metadata = (("authorization", f"Bearer {api_key(args)}"),)
    async with client_channel(args) as channel:
        verdict = await pb_grpc.AuditServiceStub(channel).VerifyAuditChain(
            pb.VerifyAuditChainRequest(checkpoint=kept), metadata=metadata
        )
    print(
        f"events checked: {verdict.events_checked}; chain ends at sequence"
        f" {verdict.last_sequence} ({verdict.last_hash or 'empty'});"
        f" anchored in Redis up to {verdict.anchored_sequence}"
    )
    if kept:
        print(f"kept checkpoint: {'holds' if verdict.checkpoint_holds else 'DOES NOT HOLD'}")
    if not verdict.intact:
        where = f"sequence {verdict.first_broken_sequence}"
        if verdict.first_broken_event_id:
            where += f" (event {verdict.first_broken_event_id})"
        print(f"NOT INTACT at {where}: {verdict.reason}")
        return 1
    print("intact")
    if args.save is not None and verdict.checkpoint:
        args.save.write_text(verdict.checkpoint)
        print(f"new checkpoint written to {args.save}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    signer = generate_key(args.name)
    fd = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(signer.encoded() + "\n")
    print(f"signing key written to {args.key_file}")
    print(f"verifier key: {signer.verifier().encoded()}")
    return 0


def run_audit_command(args: argparse.Namespace) -> int:
    try:
        if args.audit_command == "keygen":
            return _keygen(args)
        return asyncio.run(_verify(args))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (OSError, ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
