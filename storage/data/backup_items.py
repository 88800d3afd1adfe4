"""The items of a backup file, checked as the API checks what it writes.

A restore reads a file from outside: each item is rebuilt from the fields it
is made of and checked like a CreateDocument, UpsertPoints or CreateWebhook
request (a document by the very check CreateDocument runs, size included);
nothing else of a record is kept, so a namespace_id or internal_id in it is
never written (storage/data/backup_restore.py writes through the target's
scope). What passes here can be written: integers within 64 bits, finite
numbers, Unicode text, times MongoDB can hold; a file is never refused half
way through writing it for a value the check let through.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from storage.core.backup_format import BackupDecoder
from storage.core.errors import InvalidArgumentError, Reason
from storage.data.documents import (
    INT64_MAX,
    check_document,
    check_document_id,
    check_metadata,
)
from storage.data.vectors import (
    DISTANCES,
    MAX_DIMENSION,
    VectorConfig,
    check_point_id,
    check_vector,
)
from storage.webhooks.store import (
    MAX_WEBHOOKS_PER_NAMESPACE,
    WebhookRecord,
    check_description,
    check_event_types,
    check_webhook_id,
)

__all__ = ["BackupItems", "Parsed"]


class Parsed(NamedTuple):
    kind: str
    item: Any
    # the bytes the item takes by the API's measure (documents and points; else 0): what
    # a write batch is bounded by
    size: int


def _time(value: Any, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"backup file: {what} is not an ISO 8601 time", reason=Reason.BACKUP_FILE_INVALID
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgumentError(f"backup file: {what} has no time zone")
    try:  # MongoDB stores UTC: year 1 at +01:00 is before year 1 there
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidArgumentError(f"backup file: {what} is out of range") from None


def _document(record: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The fields a document is made of, checked by the check CreateDocument runs; nothing
    else of the record (a namespace_id or internal_id in it is ignored, never written)."""
    document_id = check_document_id(str(record.get("document_id", "")))
    what = f"backup file: document {document_id!r}"
    body, metadata, revision = record.get("body"), record.get("metadata"), record.get("revision")
    if not isinstance(body, dict) or not isinstance(metadata, dict):
        raise InvalidArgumentError(f"{what} is malformed")
    size = check_document(document_id, body, metadata, what=what)
    if (
        not isinstance(revision, int)
        or isinstance(revision, bool)
        or not 1 <= revision <= INT64_MAX
    ):
        raise InvalidArgumentError(f"{what} has a bad revision")
    document = {
        "document_id": document_id,
        "body": body,
        "metadata": metadata,
        "created_at": _time(record.get("created_at"), f"document {document_id!r}: created_at"),
        "updated_at": _time(record.get("updated_at"), f"document {document_id!r}: updated_at"),
        "revision": revision,
    }
    return document, size


def _vector_config(record: Mapping[str, Any]) -> VectorConfig:
    dimension, distance = record.get("dimension"), record.get("distance")
    if (
        not isinstance(dimension, int)
        or isinstance(dimension, bool)
        or not 1 <= dimension <= MAX_DIMENSION
        or distance not in DISTANCES
    ):
        raise InvalidArgumentError(
            "backup file: the vector store configuration is malformed",
            reason=Reason.BACKUP_FILE_INVALID,
        )
    return VectorConfig(dimension, str(distance))


def _point(
    record: Mapping[str, Any], config: VectorConfig | None
) -> tuple[tuple[str, list[float], dict[str, Any]], int]:
    """The point and its size by the API's measure (9 bytes a coordinate, the payload's)."""
    if config is None:
        raise InvalidArgumentError(
            "backup file: points come before a vector store", reason=Reason.BACKUP_FILE_INVALID
        )
    point_id = check_point_id(str(record.get("point_id", "")))
    vector, payload = record.get("vector"), record.get("payload")
    if not isinstance(vector, list) or not isinstance(payload, dict):
        raise InvalidArgumentError(
            f"backup file: point {point_id!r} is malformed", reason=Reason.BACKUP_FILE_INVALID
        )
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vector):
        raise InvalidArgumentError(f"backup file: point {point_id!r} has a bad vector")
    size = check_metadata(payload, what=f"backup file: point {point_id!r}: payload")
    checked = check_vector(vector, config.dimension, what=f"point {point_id!r}")
    return (point_id, checked, payload), 9 * len(checked) + size


def _reason(value: Any, webhook_id: str) -> str:
    """Why the webhook was disabled, as the server wrote it: text, cut to 256 characters."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"backup file: webhook {webhook_id} is malformed")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"backup file: webhook {webhook_id} holds text that is not valid Unicode"
        ) from None
    return value[:256]


def _webhook(record: Mapping[str, Any]) -> WebhookRecord:
    webhook_id = check_webhook_id(str(record.get("webhook_id", "")))
    url, enabled = record.get("url"), record.get("enabled")
    event_types = record.get("event_types")
    if not isinstance(url, str) or not isinstance(enabled, bool):
        raise InvalidArgumentError(
            f"backup file: webhook {webhook_id} is malformed", reason=Reason.BACKUP_FILE_INVALID
        )
    if not isinstance(event_types, list) or not all(isinstance(e, str) for e in event_types):
        raise InvalidArgumentError(f"backup file: webhook {webhook_id} is malformed")
    created = _time(record.get("created_at"), f"webhook {webhook_id}: created_at")
    return WebhookRecord(
        webhook_id=webhook_id,
        url=url,
        event_types=check_event_types(event_types),
        enabled=enabled,
        description=check_description(str(record.get("description", ""))),
        disabled_reason=_reason(record.get("disabled_reason", ""), webhook_id),
        created_at=created,
        updated_at=created,
        secret_rotated_at=None,
    )


class BackupItems:
    """Decodes and checks the records of one file; the same checks in both passes."""

    def __init__(self, decoder: BackupDecoder | None = None) -> None:
        self.decoder = decoder or BackupDecoder()
        self.config: VectorConfig | None = None
        self.webhooks = 0

    def parse(self, record: Mapping[str, Any]) -> Parsed:
        kind = str(record["kind"])
        if kind == "document":
            return Parsed(kind, *_document(record))
        if kind == "vector_store":
            if self.config is not None:
                raise InvalidArgumentError(
                    "backup file: two vector store configurations",
                    reason=Reason.BACKUP_FILE_INVALID,
                )
            self.config = _vector_config(record)
            return Parsed(kind, self.config, 0)
        if kind == "point":
            return Parsed(kind, *_point(record, self.config))
        self.webhooks += 1
        if self.webhooks > MAX_WEBHOOKS_PER_NAMESPACE:
            raise InvalidArgumentError(
                f"backup file: more than {MAX_WEBHOOKS_PER_NAMESPACE} webhooks",
                reason=Reason.BACKUP_FILE_INVALID,
            )
        return Parsed(kind, _webhook(record), 0)
