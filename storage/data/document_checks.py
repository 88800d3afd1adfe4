"""The one check of a document, run by the API (services/document_service.py) and by a
restore (storage/data/backup_items.py) alike, and the metadata rules a point's payload
shares.

A document is held to the API's size, by the API's measure: the bytes of the `Document`
message holding its id, body and metadata, computed here from the values themselves
(tests/storage/data/test_documents.py keeps the two equal). And only what the stores can
hold passes: integers within 64 bits, finite numbers, Unicode text, field names MongoDB
reads as written; so what the check passes is written whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from storage.core.errors import InvalidArgumentError
from storage.core.filters import FIELD_RE, RESERVED_FIELDS
from storage.core.ids import check_client_id

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BODY_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_LIST_VALUES",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_STRING",
    "MAX_PAYLOAD_BYTES",
    "MAX_VALUES",
    "check_body",
    "check_document",
    "check_document_id",
    "check_metadata",
    "check_number",
]

# A document (its id, body and metadata) as the API's `Document` message encodes them: the
# measure CreateDocument has always used, so every document stored before still fits.
MAX_DOCUMENT_BYTES = 256 * 1024
# A point's payload, by the same measure: the line of a point in a backup file must stay
# within the file's line limit (storage/core/backup_format.py), like a document's.
MAX_PAYLOAD_BYTES = 256 * 1024
# Every value costs at least 4 bytes of that measure (a null, a boolean or an empty list in
# a list), so no document within the size holds more values than this; the check stops at
# the first value beyond it rather than walk a tree it will refuse anyway.
MAX_VALUES = MAX_DOCUMENT_BYTES // 4
MAX_METADATA_KEYS = 64
MAX_LIST_VALUES = 100
# metadata is for filtering: short values. Long text belongs in the body.
MAX_METADATA_STRING = 1024
MAX_BODY_DEPTH = 32
# what MongoDB (BSON) and Qdrant store as an integer
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_document_id(document_id: str, *, what: str = "document_id") -> str:
    return check_client_id(document_id, what=what, field=what)


def check_number(value: int | float, *, what: str) -> None:
    """A number MongoDB and Qdrant store as it is: an integer within 64 bits, or a finite
    float. JSON (a backup file) can spell larger integers and Python's reader accepts NaN
    and Infinity; the API's numbers are doubles, NaN and infinity refused on decoding."""
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidArgumentError(
                f"{what} holds an integer outside the 64-bit range", field=what
            )
    elif not math.isfinite(value):
        raise InvalidArgumentError(f"{what} holds a number that is not finite", field=what)


def _field(length: int) -> int:
    """The bytes of a length-delimited protobuf field whose content is `length` bytes: a
    one-byte tag, the length as a varint, the content."""
    if length < 128:  # the common case: a one-byte length
        return length + 2
    return 1 + (length.bit_length() + 6) // 7 + length


def _text_bytes(value: str, what: str) -> int:
    if value.isascii():
        return len(value)
    try:
        return len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON can spell one): not storable text
        raise InvalidArgumentError(
            f"{what} holds a string that is not valid Unicode", field=what
        ) from None


class _Measure:
    """One walk over a body or a metadata map: what cannot be stored is refused, and the
    bytes each value takes as a `google.protobuf.Value` are counted (the API's measure, so
    a document from a backup file is held to the size CreateDocument allows). Sizes are
    of a message's content, without its own tag and length."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.values = 0

    def count(self) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise InvalidArgumentError(
                f"{self.what} holds more than {MAX_VALUES} values (more than fit in"
                f" {MAX_DOCUMENT_BYTES // 1024} KiB)",
                field=self.what,
            )

    def scalar(self, value: Any) -> int:
        """null and booleans: 2 bytes; numbers: 9; strings: their field."""
        self.values += 1
        if self.values > MAX_VALUES:
            self.count()
        if isinstance(value, str):
            return _field(len(value) if value.isascii() else _text_bytes(value, self.what))
        if value is None or value is True or value is False:
            return 2
        if isinstance(value, int | float):
            check_number(value, what=self.what)
            return 9
        raise InvalidArgumentError(
            f"{self.what} values must be strings, numbers, booleans, null or lists of those",
            field=self.what,
        )

    def entry(self, key: str, value: int) -> int:
        """A Struct's map entry (the key's field, the value's field), as a field."""
        key_bytes = len(key) if key.isascii() else _text_bytes(key, self.what)
        return _field(_field(key_bytes) + _field(value))

    def struct(self, mapping: Mapping[str, Any], depth: int) -> int:
        size = 0
        for key, item in mapping.items():
            if not isinstance(key, str) or not key or key.startswith("$") or "." in key:
                raise InvalidArgumentError(
                    f"{self.what} field names must be non-empty and may not start with '$'"
                    " or contain '.'",
                    field=self.what,
                )
            if "\0" in key:  # a BSON field name ends at the first NUL
                raise InvalidArgumentError(
                    f"{self.what} field names may not contain NUL", field=self.what
                )
            if key in RESERVED_FIELDS:
                raise InvalidArgumentError(
                    f"{self.what} may not use the reserved field name {key!r}",
                    field=self.what,
                )
            size += self.entry(key, self.value(item, depth + 1))
        return size

    def value(self, value: Any, depth: int) -> int:
        if depth > MAX_BODY_DEPTH:
            raise InvalidArgumentError(
                f"{self.what} is nested deeper than {MAX_BODY_DEPTH} levels", field=self.what
            )
        if isinstance(value, Mapping):
            self.count()
            return _field(self.struct(value, depth))
        if isinstance(value, list):
            self.count()
            return _field(sum(_field(self.value(item, depth + 1)) for item in value))
        return self.scalar(value)

    def metadata(self, metadata: Mapping[str, Any]) -> int:
        what = self.what
        if len(metadata) > MAX_METADATA_KEYS:
            raise InvalidArgumentError(
                f"{what} may have at most {MAX_METADATA_KEYS} keys", field=self.what
            )
        size = 0
        for key, value in metadata.items():
            if key in RESERVED_FIELDS:
                raise InvalidArgumentError(
                    f"{what} may not use the reserved key {key!r}", field=self.what
                )
            if not isinstance(key, str) or not FIELD_RE.match(key):
                raise InvalidArgumentError(
                    f"{what} keys must be 1-64 characters of A-Z a-z 0-9 _ -",
                    field=self.what,
                )
            if isinstance(value, list):
                if not 1 <= len(value) <= MAX_LIST_VALUES:
                    raise InvalidArgumentError(
                        f"{what} lists must hold 1-{MAX_LIST_VALUES} values ({key!r})",
                        field=self.what,
                    )
                if any(item is None for item in value):
                    raise InvalidArgumentError(
                        f"{what} lists may not hold null ({key!r})", field=self.what
                    )
                self.count()
                value_bytes = _field(sum(_field(self._flat(item, key)) for item in value))
            else:
                value_bytes = self._flat(value, key)
            size += self.entry(key, value_bytes)
        return size

    def _flat(self, item: Any, key: str) -> int:
        """A metadata value: a scalar, text of at most 1,024 characters."""
        if isinstance(item, str) and len(item) > MAX_METADATA_STRING:
            raise InvalidArgumentError(
                f"{self.what} strings may be at most {MAX_METADATA_STRING} characters",
                field=self.what,
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidArgumentError(
                f"{self.what} values must be finite numbers ({key!r})", field=self.what
            )
        return self.scalar(item)


def check_body(body: Mapping[str, Any], *, what: str = "body") -> int:
    """Field names MongoDB would misread (`$…`, dotted, with a NUL) or that are reserved,
    nesting beyond 32 levels, integers beyond 64 bits, numbers that are not finite and
    text that is not Unicode are refused. Returns the body's size as the API's `Struct`."""
    return _Measure(what).struct(body, 0)


def check_metadata(
    metadata: Mapping[str, Any], *, what: str = "metadata", max_bytes: int = MAX_PAYLOAD_BYTES
) -> int:
    """Flat: scalars, null, or lists of 1-100 non-null scalars; what the filter language
    means the same on documents and points (an empty list, or a null inside a list,
    would not: Qdrant cannot tell `[]` from a missing field). At most `max_bytes` as the
    API's `Struct` (a point's payload: 256 KiB, what a backup file's line can hold);
    returns that size."""
    size = _Measure(what).metadata(metadata)
    if size > max_bytes:
        raise InvalidArgumentError(f"{what} is larger than {max_bytes // 1024} KiB", field=what)
    return size


def check_document(
    document_id: str | None,
    body: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    what: str = "document",
) -> int:
    """The one check of a document, for the API and a restore alike: its id, the rules of
    its body and metadata, and its size: at most 256 KiB as the API's `Document` message
    holding the id, body and metadata. Returns that size."""
    if document_id:
        check_document_id(document_id, what=f"{what}.document_id")
    if not isinstance(body, Mapping) or not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"{what}: body and metadata must be objects", field=what)
    measure = _Measure(f"{what}.body")
    body_bytes = measure.struct(body, 0)
    measure.what = f"{what}.metadata"
    size = (
        (_field(len(document_id)) if document_id else 0)
        + _field(body_bytes)
        + _field(measure.metadata(metadata))
    )
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidArgumentError(
            f"{what} is larger than {MAX_DOCUMENT_BYTES // 1024} KiB", field=what
        )
    return size
