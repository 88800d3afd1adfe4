"""`meshgate backup` and `meshgate restore`: a client of a running server, over mTLS.

They talk to the server like any service of the mesh (a client certificate,
an ADMIN key), never to the stores: the server checks the key, the namespace
and the file, so a backup needs no database credentials and a restore cannot
bypass the checks. The key comes from `--key-file` (preferred: it is not seen
in the process list) or `MESHGATE_API_KEY`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

import grpc
from meshgate.v1 import namespace_service_pb2 as pb
from meshgate.v1 import namespace_service_pb2_grpc as pb_grpc

__all__ = [
    "add_backup_commands",
    "add_client_options",
    "api_key",
    "client_channel",
    "run_backup_command",
]

_CHUNK = 256 * 1024
_BAR = 30


def add_backup_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    about = (
        "A client of a running server over mTLS, with an ADMIN key: docs/backup.md;\n"
        "exit codes in docs/operations.md (Commands)."
    )
    backup = sub.add_parser(
        "backup",
        help="export a namespace to a backup file (docs/backup.md)",
        description="Export a namespace to a backup file.",
        epilog=about,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backup.add_argument("--namespace", required=True, help="the namespace's name or id")
    backup.add_argument("--out", required=True, type=Path, help="the backup file to write")
    restore = sub.add_parser(
        "restore",
        help="restore a backup file into an empty namespace (docs/backup.md)",
        description="Restore a backup file into an empty namespace.",
        epilog=about,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore.add_argument("file", type=Path, help="the backup file to read")
    restore.add_argument("--namespace", required=True, help="the target namespace (name or id)")
    for parser in (backup, restore):
        add_client_options(parser)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """How a client command reaches a running server: its address, the client certificate
    and an ADMIN key (`api_key`, `client_channel`)."""
    parser.add_argument("--server", default="localhost:50051", help="host:port of meshgate")
    parser.add_argument(
        "--key-file", type=Path, help="file holding an ADMIN key (else MESHGATE_API_KEY)"
    )
    parser.add_argument(
        "--ca", type=Path, default=Path("certs/ca.pem"), help="the CA of the server's certificate"
    )
    parser.add_argument(
        "--cert", type=Path, default=Path("certs/client.pem"), help="this client's certificate"
    )
    parser.add_argument(
        "--cert-key", type=Path, default=Path("certs/client-key.pem"), help="its private key"
    )


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._on = stream.isatty()

    def show(self, done: int, total: int, detail: str) -> None:
        if not self._on:
            return
        filled = _BAR * done // total if total else _BAR
        percent = 100 * done // total if total else 100
        self._stream.write(f"\r[{'#' * filled}{' ' * (_BAR - filled)}] {percent:3d}% {detail}")
        self._stream.flush()

    def end(self) -> None:
        if self._on:
            self._stream.write("\n")


def _sum(counts: pb.BackupCounts) -> int:
    return counts.documents + counts.points + counts.webhooks


def api_key(args: argparse.Namespace) -> str:
    if args.key_file is not None:
        return Path(args.key_file).read_text().strip()
    key = os.environ.get("MESHGATE_API_KEY", "").strip()
    if not key:
        raise ValueError("give an ADMIN key with --key-file FILE or MESHGATE_API_KEY")
    return key


def client_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.cert_key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    return grpc.aio.secure_channel(args.server, credentials)


async def _backup(args: argparse.Namespace, metadata: tuple[tuple[str, str], ...]) -> int:
    progress = _Progress(sys.stderr)
    partial = args.out.with_name(args.out.name + ".partial")
    last: pb.ExportProgress | None = None
    async with client_channel(args) as channel:
        call = pb_grpc.NamespaceServiceStub(channel).ExportNamespace(
            pb.ExportNamespaceRequest(), metadata=metadata
        )
        # written beside the target and renamed at the end: a failed export leaves no file
        # that looks like a backup
        try:
            with partial.open("wb") as out:
                async for message in call:
                    if message.HasField("progress"):
                        last = message.progress
                        d, t = last.done, last.total
                        progress.show(
                            _sum(d),
                            _sum(t),
                            f"documents {d.documents}/{t.documents} points {d.points}/{t.points}"
                            f" webhooks {d.webhooks}/{t.webhooks}",
                        )
                    else:
                        out.write(message.data)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(args.out)
    progress.end()
    done = last.done if last is not None else pb.BackupCounts()
    print(
        f"wrote {args.out}: {done.documents} documents, {done.points} points,"
        f" {done.webhooks} webhooks"
    )
    return 0


async def _restore(args: argparse.Namespace, metadata: tuple[tuple[str, str], ...]) -> int:
    progress = _Progress(sys.stderr)
    size = args.file.stat().st_size

    async def requests() -> AsyncIterator[pb.ImportNamespaceRequest]:
        sent = 0
        with args.file.open("rb") as source:
            while chunk := source.read(_CHUNK):
                sent += len(chunk)
                progress.show(sent, size, f"{sent // 1024} of {size // 1024} KiB sent")
                yield pb.ImportNamespaceRequest(data=chunk)

    async with client_channel(args) as channel:
        response = await pb_grpc.NamespaceServiceStub(channel).ImportNamespace(
            requests(), metadata=metadata
        )
    progress.end()
    r = response.restored
    print(
        f"restored into {response.namespace_id}: {r.documents} documents, {r.points} points,"
        f" {r.webhooks} webhooks"
    )
    for webhook in response.webhooks:
        print(f"webhook {webhook.webhook_id} {webhook.url} new secret: {webhook.secret}")
    if response.webhooks:
        print("The webhook secrets are new and shown once; give them to the receivers now.")
    return 0


def run_backup_command(args: argparse.Namespace) -> int:
    try:
        key = api_key(args)
        metadata = (("authorization", f"Bearer {key}"), ("x-namespace", args.namespace))
        run = _backup if args.command == "backup" else _restore
        return asyncio.run(run(args, metadata))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
