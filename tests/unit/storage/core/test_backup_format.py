"""The backup file format: what a reader accepts, and every damage it refuses."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from storage.core.backup_format import FORMAT, BackupDecoder, BackupEncoder, BackupFileError


def a_file(*, documents: int = 3) -> bytes:
    encoder = BackupEncoder()
    out = encoder.manifest(
        meshgate_version="0.1.0",
        exported_at="2026-01-01T00:00:00+00:00",
        namespace={"namespace_id": "ns_x", "name": "x"},
        counts={"documents": documents},
    )
    for i in range(documents):
        out += encoder.item("document", {"document_id": f"d{i}", "body": {"n": i}})
    return out + encoder.end()


def read(data: bytes) -> list[dict[str, object]]:
    decoder = BackupDecoder()
    items = list(decoder.feed(data))
    decoder.finish()
    return items


def test_an_intact_file_reads_back_whatever_the_chunking() -> None:
    data = a_file()
    assert gzip.decompress(data).splitlines()[0].startswith(b'{"kind":"manifest"')
    decoder = BackupDecoder()
    items = [r for i in range(len(data)) for r in decoder.feed(data[i : i + 1])]
    manifest = decoder.finish()
    assert manifest["format"] == FORMAT
    assert [i["document_id"] for i in items] == ["d0", "d1", "d2"]
    assert read(data) == items


def test_a_truncated_file_is_refused() -> None:
    data = a_file()
    for cut in (len(data) - 1, len(data) // 2, 10):
        with pytest.raises(BackupFileError, match=r"truncated|damaged"):
            read(data[:cut])


def test_a_changed_item_fails_the_checksum() -> None:
    lines = gzip.decompress(a_file()).splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"n":1', b'"n":7')
    with pytest.raises(BackupFileError, match="checksum"):
        read(gzip.compress(b"".join(lines)))


def test_counts_that_disagree_with_the_content_are_refused() -> None:
    lines = gzip.decompress(a_file()).splitlines(keepends=True)
    del lines[2]
    end = json.loads(lines[-1])
    # an attacker can recompute the checksum; the counts must still match the content

    end["sha256"] = hashlib.sha256(b"".join(lines[:-1])).hexdigest()
    lines[-1] = json.dumps(end).encode() + b"\n"
    with pytest.raises(BackupFileError, match="counts"):
        read(gzip.compress(b"".join(lines)))


def test_another_format_version_is_refused_at_the_first_line() -> None:
    lines = gzip.decompress(a_file()).splitlines(keepends=True)
    manifest = json.loads(lines[0])
    manifest["format_version"] = 2
    lines[0] = json.dumps(manifest).encode() + b"\n"
    decoder = BackupDecoder()
    with pytest.raises(BackupFileError, match="format version 2"):
        list(decoder.feed(gzip.compress(b"".join(lines))))


def test_bytes_after_the_end_and_foreign_files_are_refused() -> None:
    with pytest.raises(BackupFileError, match="follow the end"):
        read(a_file() + b"x")
    with pytest.raises(BackupFileError, match="manifest"):
        read(gzip.compress(b'{"kind":"document"}\n'))
    with pytest.raises(BackupFileError, match="gzip"):
        read(b"PK\x03\x04 not a gzip file")
