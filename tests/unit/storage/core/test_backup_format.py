"""The backup file format: what a reader accepts, and every damage it refuses."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from storage.core.backup_format import (
    FORMAT,
    MAX_LINE_BYTES,
    MAX_LINE_TOKENS,
    BackupDecoder,
    BackupEncoder,
    BackupFileError,
)
from storage.data.documents import (
    MAX_DOCUMENT_BYTES,
    MAX_LIST_VALUES,
    MAX_METADATA_KEYS,
    MAX_PAYLOAD_BYTES,
    MAX_VALUES,
)
from storage.data.vectors import MAX_DIMENSION


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


def lines_file(*lines: bytes) -> bytes:
    head = json.dumps({"kind": "manifest", "format": FORMAT, "format_version": 1}).encode()
    return gzip.compress(b"\n".join([head, *lines]) + b"\n")


def refusal(data: bytes, **caps: int) -> str:
    decoder = BackupDecoder(**caps)
    with pytest.raises(BackupFileError) as refused:
        for chunk in range(0, len(data), 64 * 1024):
            list(decoder.feed(data[chunk : chunk + 64 * 1024]))
        decoder.finish()
    return refused.value.message


def test_a_long_line_is_refused_before_it_is_parsed() -> None:
    """Longer than MAX_LINE_BYTES, whether the line ends in the same inflated piece (it was
    not measured then) or not."""
    ended = b'{"kind":"document","s":"' + b"x" * MAX_LINE_BYTES + b'"}'
    assert "a line is longer than 2097152 bytes" in refusal(lines_file(ended))
    assert "a line is longer" in refusal(lines_file(b"x" * (3 * MAX_LINE_BYTES)))


def test_a_line_of_too_many_values_is_refused_before_it_is_parsed() -> None:
    """json.loads holds the interpreter per value: a line of 1 MiB of `{},` is 350,000 of
    them. Counted outside strings: commas and brackets in text do not count."""
    many = b'{"kind":"document","body":{"x":[' + b"{}," * MAX_LINE_TOKENS + b"{}]}}"
    assert f"more than {MAX_LINE_TOKENS} values" in refusal(lines_file(many))
    text = json.dumps({"kind": "document", "s": '[{,\\"' * MAX_LINE_TOKENS}).encode()
    assert text.count(b",") > MAX_LINE_TOKENS
    with pytest.raises(BackupFileError, match="checksum"):  # parsed: only the checksum fails
        read(lines_file(text, b'{"kind":"end","counts":{},"sha256":""}'))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"1" * 21, "an integer beyond 64 bits"),  # Python parses those in quadratic time
        (b"NaN", "NaN is not a JSON number"),
        (b"-Infinity", "-Infinity is not a JSON number"),
        (b"[" * 100_000, "nested too deeply"),  # was a RecursionError: INTERNAL
    ],
)
def test_what_json_has_no_number_for_is_refused(raw: bytes, message: str) -> None:
    assert message in refusal(lines_file(b'{"kind":"document","n":' + raw + b"}"))


def test_inflated_bytes_and_items_are_capped_when_asked() -> None:
    data = a_file(documents=50)
    assert "more than the 20 items" in refusal(data, max_items=20)
    assert "inflates to more than the 1000 bytes" in refusal(data, max_inflated_bytes=1000)
    decoder = BackupDecoder(max_items=50, max_inflated_bytes=len(gzip.decompress(data)))
    list(decoder.feed(data))
    decoder.finish()


def test_the_line_limits_hold_the_largest_items_the_api_accepts() -> None:
    """The figures of MAX_LINE_BYTES and MAX_LINE_TOKENS, from storage/data's limits: JSON
    spells a byte of the API's measure in at most 6 (`\\u0001`), a 32-bit float in at most
    24 characters, and a value in at most two of `,` `[` `{`."""
    fixed_fields = 1024  # kind, ids, times, revision, and their punctuation
    document = 6 * MAX_DOCUMENT_BYTES + fixed_fields
    point = 6 * MAX_PAYLOAD_BYTES + MAX_DIMENSION * 25 + fixed_fields
    assert max(document, point) <= MAX_LINE_BYTES
    payload_values = MAX_METADATA_KEYS * (MAX_LIST_VALUES + 1)
    fixed_tokens = 16
    assert 2 * MAX_VALUES + fixed_tokens <= MAX_LINE_TOKENS
    assert MAX_DIMENSION + 2 * payload_values + fixed_tokens <= MAX_LINE_TOKENS
    float32_extremes = (-1.1754942106924411e-38, -3.4028234663852886e38, -1.401298464324817e-45)
    assert max(len(repr(v)) for v in float32_extremes) <= 24
