"""The namespace backup file: gzip over JSON lines, a manifest first, a checksum last.

A backup must say what it is without meshgate at hand (`zcat FILE | head -1`
shows the manifest), survive being copied around, and be refused whole when
it was damaged or cut short. So:

- line 1, the manifest: the format name and version, the meshgate version that
  wrote it, when, the namespace it came from (informative only: a restore never
  reads a scope from the file), and the item counts when the export began;
- one line per item (`document`, `vector_store`, `point`, `webhook`);
- the last line, `end`: the exact item counts and the SHA-256 of every byte
  before it (the uncompressed lines, newlines included).

The counts are written twice because an export is not a snapshot: items can be
written while it runs, so the manifest's counts are the totals the progress
bar counts towards, and `end` holds what the file really contains.

Nothing here does I/O: the encoder returns bytes to send, the decoder is fed
bytes as they arrive and returns whole records.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from storage.core.errors import InvalidArgumentError, Reason

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ITEM_KINDS",
    "MAX_LINE_BYTES",
    "BackupDecoder",
    "BackupEncoder",
    "BackupFileError",
]

FORMAT = "meshgate-namespace-backup"
FORMAT_VERSION = 1
ITEM_KINDS = ("document", "vector_store", "point", "webhook")
# one item is at most one document (the gRPC message limit is 4 MiB by default)
MAX_LINE_BYTES = 16 * 1024 * 1024
_GZIP = 16 + zlib.MAX_WBITS
_PIECE_BYTES = 1024 * 1024


class BackupFileError(InvalidArgumentError):
    """The file is not a whole, intact backup of a format this server reads."""

    default_reason = Reason.BACKUP_FILE_INVALID

    def __init__(self, problem: str) -> None:
        super().__init__(f"backup file refused: {problem}; nothing was written")


def _line(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class BackupEncoder:
    """Writes one backup file incrementally; each method returns the next compressed bytes."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, _GZIP)
        self._digest = hashlib.sha256()
        self._counts: Counter[str] = Counter()
        self._started = False

    def manifest(
        self,
        *,
        meshgate_version: str,
        exported_at: str,
        namespace: Mapping[str, Any],
        counts: Mapping[str, int],
    ) -> bytes:
        if self._started:
            raise RuntimeError("the manifest is the first line")
        self._started = True
        return self._write(
            {
                "kind": "manifest",
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "meshgate_version": meshgate_version,
                "exported_at": exported_at,
                "namespace": dict(namespace),
                "counts": dict(counts),
            }
        )

    def item(self, kind: str, item: Mapping[str, Any]) -> bytes:
        if kind not in ITEM_KINDS or not self._started:
            raise RuntimeError(f"an item of kind {kind!r} cannot be written here")
        self._counts[kind] += 1
        return self._write({"kind": kind, **item})

    def end(self) -> bytes:
        """The `end` line (not part of its own checksum) and the rest of the gzip stream."""
        trailer = _line(
            {
                "kind": "end",
                "counts": {k: self._counts[k] for k in ITEM_KINDS},
                "sha256": self._digest.hexdigest(),
            }
        )
        return self._compressor.compress(trailer) + self._compressor.flush()

    @property
    def counts(self) -> dict[str, int]:
        return {k: self._counts[k] for k in ITEM_KINDS}

    def _write(self, record: Mapping[str, Any]) -> bytes:
        line = _line(record)
        self._digest.update(line)
        return self._compressor.compress(line)


class BackupDecoder:
    """Reads one backup file as its bytes arrive; refuses it at the first sign of damage.

    `feed` returns the item records completed by the chunk; `finish` checks
    what can only be checked at the end (the gzip stream ended, the `end` line
    came, its counts and checksum match) and returns the manifest. A caller
    that must not write a damaged file's items reads the file once through a
    decoder before writing anything (storage/data/backup.py does)."""

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj(_GZIP)
        self._digest = hashlib.sha256()
        self._pending = b""
        self._counts: Counter[str] = Counter()
        self._manifest: dict[str, Any] | None = None
        self._end: dict[str, Any] | None = None

    @property
    def manifest(self) -> dict[str, Any] | None:
        return self._manifest

    def feed(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        """The item records the chunk completes, lazily: a small chunk that inflates a
        lot is read a bounded piece at a time."""
        if self._decompressor.eof:
            if chunk:
                raise BackupFileError("bytes follow the end of the compressed stream")
            return
        data = chunk
        while True:
            try:
                piece = self._decompressor.decompress(data, _PIECE_BYTES)
            except zlib.error:
                raise BackupFileError("not a gzip stream, or a damaged one") from None
            yield from self._records(piece)
            data = self._decompressor.unconsumed_tail
            if not data:
                break
        if self._decompressor.unused_data:
            raise BackupFileError("bytes follow the end of the compressed stream")

    def _records(self, data: bytes) -> Iterator[dict[str, Any]]:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_LINE_BYTES:
            raise BackupFileError(f"a line is longer than {MAX_LINE_BYTES} bytes")
        for raw in lines:
            record = self._record(raw)
            if record is not None:
                yield record

    def _record(self, raw: bytes) -> dict[str, Any] | None:
        if self._end is not None:
            raise BackupFileError("lines follow the end line")
        try:
            record = json.loads(raw)
        except ValueError:
            raise BackupFileError("a line is not JSON") from None
        if not isinstance(record, dict):
            raise BackupFileError("a line is not a JSON object")
        kind = record.get("kind")
        if kind == "end":
            self._end = record
            return None
        self._digest.update(raw + b"\n")
        if self._manifest is None:
            self._check_manifest(record)
            self._manifest = record
            return None
        if kind not in ITEM_KINDS:
            raise BackupFileError(f"unknown item kind {str(kind)[:32]!r}")
        self._counts[kind] += 1
        return record

    @staticmethod
    def _check_manifest(record: Mapping[str, Any]) -> None:
        if record.get("kind") != "manifest" or record.get("format") != FORMAT:
            raise BackupFileError("it does not start with a meshgate backup manifest")
        version = record.get("format_version")
        if version != FORMAT_VERSION:
            raise BackupFileError(
                f"format version {str(version)[:16]} is not the version this server reads"
                f" ({FORMAT_VERSION})"
            )

    def finish(self) -> dict[str, Any]:
        if not self._decompressor.eof or self._pending:
            raise BackupFileError("it is truncated")
        if self._manifest is None or self._end is None:
            raise BackupFileError("it is truncated")
        if self._end.get("sha256") != self._digest.hexdigest():
            raise BackupFileError("the checksum does not match the content")
        counts = {k: self._counts[k] for k in ITEM_KINDS}
        if self._end.get("counts") != counts:
            raise BackupFileError("the item counts do not match the content")
        return self._manifest

    @property
    def checksum(self) -> str:
        """The checksum the file declares (valid once `finish` returned)."""
        return str(self._end.get("sha256")) if self._end is not None else ""

    @property
    def counts(self) -> dict[str, int]:
        return {k: self._counts[k] for k in ITEM_KINDS}
