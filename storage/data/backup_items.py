"""The items of a backup file, checked as the API checks what it writes.

A restore reads a file from outside: each item is rebuilt from the fields it
is made of and checked like a CreateDocument, UpsertPoints or CreateWebhook
request; nothing else of a record is kept, so a namespace_id or internal_id
in it is never written (storage/data/backup.py writes through the target's
scope).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from storage.core.backup_format import BackupDecoder
from storage.core.errors import InvalidArgumentError, Reason
from storage.data.documents import check_body, check_document_id, check_metadata
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

__all__ = ["BackupItems"]


def _time(value: Any, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"backup file: {what} is not an ISO 8601 time", reason=Reason.BACKUP_FILE_INVALID
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgumentError(
            f"backup file: {what} has no time zone", reason=Reason.BACKUP_FILE_INVALID
        )
    return parsed


def _document(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a document is made of, checked as CreateDocument checks them; nothing else
    of the record (a namespace_id or internal_id in it is ignored, never written)."""
    document_id = check_document_id(str(record.get("document_id", "")))
    body, metadata, revision = record.get("body"), record.get("metadata"), record.get("revision")
    if not isinstance(body, dict) or not isinstance(metadata, dict):
        raise InvalidArgumentError(
            f"backup file: document {document_id!r} is malformed", reason=Reason.BACKUP_FILE_INVALID
        )
    check_body(body)
    check_metadata(metadata)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise InvalidArgumentError(
            f"backup file: document {document_id!r} has a bad revision",
            reason=Reason.BACKUP_FILE_INVALID,
        )
    return {
        "document_id": document_id,
        "body": body,
        "metadata": metadata,
        "created_at": _time(record.get("created_at"), "created_at"),
        "updated_at": _time(record.get("updated_at"), "updated_at"),
        "revision": revision,
    }


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
) -> tuple[str, list[float], dict[str, Any]]:
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
        raise InvalidArgumentError(
            f"backup file: point {point_id!r} has a bad vector", reason=Reason.BACKUP_FILE_INVALID
        )
    check_metadata(payload, what="payload")
    return point_id, check_vector(vector, config.dimension, what=f"point {point_id!r}"), payload


def _webhook(record: Mapping[str, Any]) -> WebhookRecord:
    webhook_id = check_webhook_id(str(record.get("webhook_id", "")))
    url, enabled = record.get("url"), record.get("enabled")
    event_types = record.get("event_types")
    if not isinstance(url, str) or not isinstance(enabled, bool):
        raise InvalidArgumentError(
            f"backup file: webhook {webhook_id} is malformed", reason=Reason.BACKUP_FILE_INVALID
        )
    if not isinstance(event_types, list) or not all(isinstance(e, str) for e in event_types):
        raise InvalidArgumentError(
            f"backup file: webhook {webhook_id} is malformed", reason=Reason.BACKUP_FILE_INVALID
        )
    created = _time(record.get("created_at"), "created_at")
    return WebhookRecord(
        webhook_id=webhook_id,
        url=url,
        event_types=check_event_types(event_types),
        enabled=enabled,
        description=check_description(str(record.get("description", ""))),
        disabled_reason=str(record.get("disabled_reason", ""))[:256],
        created_at=created,
        updated_at=created,
        secret_rotated_at=None,
    )


class BackupItems:
    """Decodes and checks the records of one file; the same checks in both passes."""

    def __init__(self) -> None:
        self.decoder = BackupDecoder()
        self.config: VectorConfig | None = None
        self.webhooks = 0

    def parse(self, record: Mapping[str, Any]) -> tuple[str, Any]:
        kind = str(record["kind"])
        if kind == "document":
            return kind, _document(record)
        if kind == "vector_store":
            if self.config is not None:
                raise InvalidArgumentError(
                    "backup file: two vector store configurations",
                    reason=Reason.BACKUP_FILE_INVALID,
                )
            self.config = _vector_config(record)
            return kind, self.config
        if kind == "point":
            return kind, _point(record, self.config)
        self.webhooks += 1
        if self.webhooks > MAX_WEBHOOKS_PER_NAMESPACE:
            raise InvalidArgumentError(
                f"backup file: more than {MAX_WEBHOOKS_PER_NAMESPACE} webhooks",
                reason=Reason.BACKUP_FILE_INVALID,
            )
        return kind, _webhook(record)
