"""Signed audit checkpoints, published out of MongoDB and Redis.

The chain's anchor lives in Redis (storage/audit/anchor.py): whoever can write both
MongoDB and Redis can rewrite the chain and the anchor together. A checkpoint
(storage/core/checkpoints.py) is the chain's head at one sequence, signed with a
server key that lives in neither store, and published where neither store's writer
reaches: the log (shipped off the host by the log pipeline), a file per organization
(a volume backed up or collected elsewhere). Anyone holding a checkpoint can later
ask `VerifyAuditChain` whether the chain still holds that hash at that sequence.

Every `interval` each replica signs the newest head it wrote itself for each
organization it wrote for since its last round (the chain as this writer chained it,
not as read back from MongoDB), and publishes it; `VerifyAuditChain` signs the chain's
end on demand when it verified intact. A sink that fails keeps the head pending for
the next round; the pending heads are at most one per organization.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from storage.audit.anchor import Anchor
from storage.audit.log import AuditLog
from storage.core.checkpoints import Checkpoint, CheckpointError, CheckpointKeys
from storage.core.errors import InvalidArgumentError

__all__ = ["AuditCheckpoints", "CheckpointSink", "FileSink", "LogSink"]

_LOG = logging.getLogger("meshgate.audit")


class CheckpointSink(Protocol):
    """Where signed checkpoints go; raises OSError when it could not take one."""

    name: str

    async def publish(self, checkpoint: Checkpoint, note: str) -> None: ...


class LogSink:
    """One INFO line per checkpoint (logger `meshgate.audit.checkpoints`) with the
    organization_id, the sequence and the signed note."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("meshgate.audit.checkpoints")

    async def publish(self, checkpoint: Checkpoint, note: str) -> None:
        self._log.info(
            "audit checkpoint",
            extra={
                "organization_id": checkpoint.organization_id,
                "sequence": checkpoint.sequence,
                "checkpoint": note,
            },
        )


class FileSink:
    """`<directory>/<organization_id>.checkpoint`: each organization's newest checkpoint,
    written beside it and renamed over it (a reader never sees half a note). A file that
    already holds a later sequence (another replica's, on a shared volume) is kept."""

    name = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_of(self, organization_id: str) -> Path:
        return self.directory / f"{organization_id}.checkpoint"

    async def publish(self, checkpoint: Checkpoint, note: str) -> None:
        await asyncio.to_thread(self._write, checkpoint, note)

    def _write(self, checkpoint: Checkpoint, note: str) -> None:
        path = self.path_of(checkpoint.organization_id)
        try:
            size = path.read_text().split("\n")[1]
            if size.isdigit() and int(size) >= checkpoint.sequence:
                return
        except (FileNotFoundError, IndexError):
            pass
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        partial.write_text(note)
        os.replace(partial, path)


class AuditCheckpoints:
    def __init__(
        self, *, keys: CheckpointKeys, sinks: Sequence[CheckpointSink], log: AuditLog
    ) -> None:
        self._keys = keys
        self._sinks = tuple(sinks)
        self._log = log
        log.keeps_written_heads = True
        self._pending: dict[str, Anchor] = {}
        self.published = 0
        self.failures = 0

    def sign(self, checkpoint: Checkpoint) -> str:
        return self._keys.signer.sign(checkpoint.text())

    async def publish(self, checkpoint: Checkpoint) -> str:
        """Sign and hand to every sink; the signed note, whether or not every sink took it
        (one that failed is logged, and the head stays pending for the next round)."""
        note = self.sign(checkpoint)
        if not await self._deliver(checkpoint, note):
            self._keep_pending(
                checkpoint.organization_id, Anchor(checkpoint.sequence, checkpoint.hash)
            )
        return note

    async def publish_written(self) -> None:
        """One round: the heads this replica wrote since the last round (and those a failed
        round left pending), each signed and published."""
        for organization_id, head in self._log.take_written_heads().items():
            self._keep_pending(organization_id, head)
        for organization_id, head in list(self._pending.items()):
            checkpoint = Checkpoint(organization_id, head.sequence, head.hash)
            delivered = await self._deliver(checkpoint, self.sign(checkpoint))
            if delivered and self._pending.get(organization_id) is head:
                del self._pending[organization_id]

    def _keep_pending(self, organization_id: str, head: Anchor) -> None:
        pending = self._pending.get(organization_id)
        if pending is None or pending.sequence < head.sequence:
            self._pending[organization_id] = head

    async def _deliver(self, checkpoint: Checkpoint, note: str) -> bool:
        delivered = True
        for sink in self._sinks:
            try:
                await sink.publish(checkpoint, note)
            except OSError as exc:
                self.failures += 1
                delivered = False
                _LOG.warning(
                    "could not publish an audit checkpoint to the %s sink: %s",
                    sink.name,
                    type(exc).__name__,
                )
        if delivered:
            self.published += 1
        return delivered

    def open(self, note: str, organization_id: str) -> Anchor:
        """The sequence and hash a kept checkpoint of this organization asserts; INVALID_ARGUMENT
        when it is malformed, altered, signed by no key of this server or another
        organization's."""
        try:
            checkpoint = Checkpoint.parse(self._keys.open(note))
        except CheckpointError as exc:
            raise InvalidArgumentError(f"checkpoint: {exc}", field="checkpoint") from None
        if checkpoint.organization_id != organization_id:
            raise InvalidArgumentError(
                "checkpoint: it is not this organization's chain", field="checkpoint"
            )
        return Anchor(checkpoint.sequence, checkpoint.hash)
