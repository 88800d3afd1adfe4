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

A file comes from outside, so reading one costs bounded work per byte, line and
file: it inflates at most 1 MiB at a time, and refuses a line longer than
MAX_LINE_BYTES or with more than MAX_LINE_TOKENS values before the line is
parsed (parsing is the one step that cannot be interrupted: json.loads holds
the interpreter for the whole line), an integer of more than 20 digits (Python
parses those in quadratic time), NaN and Infinity (not JSON), and, when the
caller sets them, more inflated bytes or items than it takes.
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
    "MAX_LINE_TOKENS",
    "BackupDecoder",
    "BackupEncoder",
    "BackupFileError",
]

FORMAT = "meshgate-namespace-backup"
FORMAT_VERSION = 1
ITEM_KINDS = ("document", "vector_store", "point", "webhook")
# The longest line an item the API accepts can take (tests/storage/core/test_backup_format.py
# checks the figures against storage/data): a document is at most 256 KiB as the API's
# message measures it, and JSON spells a byte of it in at most 6 (a control character is
# `\u0001`): 1.5 MiB. A point: a payload of at most 256 KiB by the same measure (1.5 MiB) and
# 4,096 floats of at most 24 characters and a comma (100 KiB). Plus the fixed fields of the
# line: about 1.6 MiB, rounded up.
MAX_LINE_BYTES = 2 * 1024 * 1024
# The values of a line, counted as the `,` `[` `{` outside strings (at most two per value):
# a document within 256 KiB holds at most 65,536 values (each costs 4 bytes or more of the
# measure), a point at most 4,096 + 6,464. json.loads spends its time per value: this bounds
# how long one line holds the interpreter (about 25 ms on one core) whatever its bytes.
MAX_LINE_TOKENS = 2 * 65_536 + 1024
# what MongoDB and Qdrant store as an integer has at most 19 digits and a sign
_MAX_INTEGER_CHARACTERS = 20
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


def _integer(text: str) -> int:
    if len(text) > _MAX_INTEGER_CHARACTERS:
        raise BackupFileError("a number is an integer beyond 64 bits")
    return int(text)


def _constant(text: str) -> Any:
    raise BackupFileError(f"{text} is not a JSON number")


# one decoder for every line (json.loads with hooks would build one per line)
_JSON = json.JSONDecoder(parse_int=_integer, parse_constant=_constant)


def _tokens(raw: bytes) -> int:
    """An upper bound on the values of a line: its `,` `[` `{`, outside strings once the
    count over the whole line is over the limit (only then is the exact count worth it:
    strings cut out at the quotes that are not escaped)."""
    count = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if count <= MAX_LINE_TOKENS or b'"' not in raw:
        return count
    if b"\\" in raw:  # `\\` first: in `\\"` the quote ends the string
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(raw.split(b'"')[::2])
    return outside.count(b",") + outside.count(b"[") + outside.count(b"{")


class BackupDecoder:
    """Reads one backup file as its bytes arrive; refuses it at the first sign of damage.

    `feed` returns the item records completed by the chunk, lazily: a caller that stops
    pulling for a while holds at most one inflated piece (1 MiB) and one line; `finish`
    checks what can only be checked at the end (the gzip stream ended,
    the `end` line came, its counts and checksum match) and returns the manifest. A caller
    that must not write a damaged file's items reads the file once through a decoder
    before writing anything (storage/data/backup_restore.py does).

    `max_inflated_bytes` and `max_items`, when set, refuse a file that inflates to more
    bytes, or holds more items, than that."""

    def __init__(
        self, *, max_inflated_bytes: int | None = None, max_items: int | None = None
    ) -> None:
        self._decompressor = zlib.decompressobj(_GZIP)
        self._digest = hashlib.sha256()
        self._pending = b""
        self._counts: Counter[str] = Counter()
        self._manifest: dict[str, Any] | None = None
        self._end: dict[str, Any] | None = None
        self._max_inflated = max_inflated_bytes
        self._max_items = max_items
        self.inflated = 0
        self.items = 0

    @property
    def manifest(self) -> dict[str, Any] | None:
        return self._manifest

    def feed(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        """The item records the chunk completes, lazily."""
        for records in self._pieces(chunk):
            yield from records

    def _pieces(self, chunk: bytes) -> Iterator[Iterator[dict[str, Any]]]:
        """The records the chunk completes, per inflated piece of at most 1 MiB: a small
        chunk that inflates a lot is read a bounded piece at a time."""
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
            self.inflated += len(piece)
            if self._max_inflated is not None and self.inflated > self._max_inflated:
                raise BackupFileError(
                    f"it inflates to more than the {self._max_inflated} bytes this server"
                    " takes in one import"
                )
            yield self._records(piece)
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
        if len(raw) > MAX_LINE_BYTES:
            raise BackupFileError(f"a line is longer than {MAX_LINE_BYTES} bytes")
        if _tokens(raw) > MAX_LINE_TOKENS:
            raise BackupFileError(f"a line holds more than {MAX_LINE_TOKENS} values")
        try:
            record = _JSON.decode(raw.decode())
        except RecursionError:
            raise BackupFileError("a line is nested too deeply") from None
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
        self.items += 1
        if self._max_items is not None and self.items > self._max_items:
            raise BackupFileError(
                f"it holds more than the {self._max_items} items this server takes in one import"
            )
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
