"""Deliveries of events to webhooks, in MongoDB, only through ScopedCollection.

A delivery is one event for one webhook. Its id is derived from the event and
the webhook (`dlv_` + event time + a digest), so writing it twice is harmless.
Each keeps its last attempts (response code, error, duration) for ListDeliveries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope, ScopedCollection
from storage.core.clock import utc_now
from storage.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, Reason
from storage.core.ids import (
    TIME_ORDERED_BODY,
    derived_time_ordered_id,
    prefixed_id_re,
)
from storage.core.pages import decode_page_token, page_of

__all__ = [
    "DELIVERY_ID_RE",
    "DELIVERY_STATUSES",
    "MAX_ATTEMPTS_KEPT",
    "AttemptRecord",
    "DeliveryRecord",
    "DeliveryStore",
    "delivery_id_for",
]

MAX_ATTEMPTS_KEPT = 10

DELIVERY_ID_RE = prefixed_id_re("dlv", length=TIME_ORDERED_BODY)

DELIVERY_STATUSES = ("pending", "succeeded", "failed", "exhausted")


def delivery_id_for(*, event_id: str, webhook_id: str, event_time: datetime) -> str:
    """Deterministic: the same event and webhook always give the same delivery."""
    return derived_time_ordered_id("dlv", event_time, f"{event_id}/{webhook_id}")


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    at: datetime
    response_code: int
    error: str
    duration_ms: int

    def to_doc(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "response_code": self.response_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    delivery_id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: str
    attempt_count: int
    # attempts since the delivery was (re)started: the position in the retry schedule
    round_attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_response_code: int
    last_error: str
    created_at: datetime
    updated_at: datetime
    attempts: tuple[AttemptRecord, ...] = field(default=())


def _delivery(doc: Mapping[str, Any]) -> DeliveryRecord:
    return DeliveryRecord(
        delivery_id=doc["delivery_id"],
        webhook_id=doc["webhook_id"],
        event_id=doc["event_id"],
        event_type=doc["event_type"],
        status=doc["status"],
        attempt_count=int(doc.get("attempt_count", 0)),
        round_attempts=int(doc.get("round_attempts", 0)),
        next_attempt_at=doc.get("next_attempt_at"),
        last_attempt_at=doc.get("last_attempt_at"),
        last_response_code=int(doc.get("last_response_code", 0)),
        last_error=doc.get("last_error") or "",
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        attempts=tuple(
            AttemptRecord(
                at=a["at"],
                response_code=int(a["response_code"]),
                error=a["error"],
                duration_ms=int(a["duration_ms"]),
            )
            for a in doc.get("attempts", ())
        ),
    )


class DeliveryStore:
    COLLECTION = "deliveries"

    def __init__(self, *, mongo: MongoStore, now: Callable[[], datetime] = utc_now) -> None:
        self._mongo = mongo
        self._now = now

    def _collection(self, scope: Scope) -> ScopedCollection:
        return self._mongo.scoped(self.COLLECTION, scope)

    async def create(
        self, scope: Scope, *, delivery_id: str, webhook_id: str, event_id: str, event_type: str
    ) -> None:
        """Idempotent: a delivery that exists already is left as it is."""
        now = self._now()
        with contextlib.suppress(DuplicateKeyError):
            await self._collection(scope).insert_one(
                {
                    "delivery_id": delivery_id,
                    "webhook_id": webhook_id,
                    "event_id": event_id,
                    "event_type": event_type,
                    "status": "pending",
                    "attempt_count": 0,
                    "round_attempts": 0,
                    "next_attempt_at": now,
                    "last_attempt_at": None,
                    "last_response_code": 0,
                    "last_error": "",
                    "attempts": [],
                    "created_at": now,
                    "updated_at": now,
                }
            )

    async def find(self, scope: Scope, delivery_id: str) -> DeliveryRecord | None:
        doc = await self._collection(scope).find_one({"delivery_id": delivery_id})
        return None if doc is None else _delivery(doc)

    async def get(self, scope: Scope, delivery_id: str) -> DeliveryRecord:
        if not DELIVERY_ID_RE.match(delivery_id):
            raise InvalidArgumentError(
                "delivery_id is malformed (expected dlv_...)", field="delivery_id"
            )
        record = await self.find(scope, delivery_id)
        if record is None:
            raise NotFoundError("delivery not found")
        return record

    async def list_page(
        self,
        scope: Scope,
        *,
        webhook_id: str,
        statuses: frozenset[str],
        page_size: int,
        page_token: str,
    ) -> tuple[list[DeliveryRecord], str]:
        after = decode_page_token(page_token, kind="dlv", id_pattern=DELIVERY_ID_RE)
        query: dict[str, Any] = {"webhook_id": webhook_id}
        if statuses:
            query["status"] = {"$in": sorted(statuses)}
        if after is not None:
            query["delivery_id"] = {"$lt": after}
        docs = await self._collection(scope).find(
            query, sort=[("delivery_id", -1)], limit=page_size + 1
        )
        return page_of(docs, page_size=page_size, kind="dlv", key="delivery_id", build=_delivery)

    async def record_attempt(
        self,
        scope: Scope,
        current: DeliveryRecord,
        *,
        attempt: AttemptRecord,
        status: str,
        next_attempt_at: datetime | None,
    ) -> None:
        """Only the holder of the delivery's work-queue lease calls this, so no one races it."""
        kept = [a.to_doc() for a in current.attempts][-(MAX_ATTEMPTS_KEPT - 1) :]
        await self._collection(scope).update_one(
            {"delivery_id": current.delivery_id, "status": "pending"},
            {
                "$set": {
                    "status": status,
                    "next_attempt_at": next_attempt_at,
                    "last_attempt_at": attempt.at,
                    "last_response_code": attempt.response_code,
                    "last_error": attempt.error,
                    "attempts": [*kept, attempt.to_doc()],
                    "updated_at": self._now(),
                },
                "$inc": {"attempt_count": 1, "round_attempts": 1},
            },
        )

    async def stop(self, scope: Scope, delivery_id: str, *, status: str, error: str) -> None:
        """End a pending delivery without an attempt (its webhook was disabled or removed)."""
        await self._collection(scope).update_one(
            {"delivery_id": delivery_id, "status": "pending"},
            {
                "$set": {
                    "status": status,
                    "next_attempt_at": None,
                    "last_error": error,
                    "updated_at": self._now(),
                }
            },
        )

    async def restart(self, scope: Scope, delivery_id: str) -> DeliveryRecord:
        """FAILED or EXHAUSTED -> PENDING with a fresh retry schedule."""
        current = await self.get(scope, delivery_id)
        if current.status not in ("failed", "exhausted"):
            raise FailedPreconditionError(
                f"only failed or exhausted deliveries can be retried; this one is {current.status}"
            )
        now = self._now()
        doc = await self._collection(scope).find_one_and_update(
            {"delivery_id": delivery_id, "status": current.status},
            {
                "$set": {
                    "status": "pending",
                    "round_attempts": 0,
                    "next_attempt_at": now,
                    "updated_at": now,
                }
            },
        )
        if doc is None:
            raise FailedPreconditionError(
                "the delivery changed concurrently; retry", reason=Reason.CONCURRENT_CHANGE
            )
        return _delivery(doc)

    async def delete_for_webhook(self, scope: Scope, webhook_id: str) -> int:
        return await self._collection(scope).delete_many({"webhook_id": webhook_id})
