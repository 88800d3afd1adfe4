"""The event outbox: events of a namespace and their deliveries, written crash-safely.

`EventOutbox.publish(scope, event_type, data)` is the whole API for features
that emit events (task completion; organization events through
`storage/webhooks/organization_events.py`). It is idempotent by event id and
crash-safe without transactions:

1. a work-queue row for the event is *reserved* (due only after a grace period);
2. the event is stored (serialized once: every retry sends the same bytes);
3. one delivery per subscribed, enabled webhook of the namespace is written,
   each followed by its own work-queue row, due now;
4. the event's row is dropped.

A crash after step 1 leaves the event's row; when it becomes due a worker
finishes the fan-out (`recover`), or drops the row if the event was never
stored (the publisher saw the error). So an event that was stored reaches
every webhook that was subscribed when it was published, at least once.

Callers that must tie an event to a state change keep the event with the
state change (tasks embed it in their final-state update) and call
`publish_event` again after a crash: it is idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope, ScopedCollection
from storage.backends.work_queue import Claim, WorkQueue
from storage.core.clock import rfc3339, utc_now
from storage.core.ids import time_ordered_id
from storage.webhooks.deliveries import DeliveryStore, delivery_id_for
from storage.webhooks.store import EVENT_TYPES, WebhookStore

__all__ = ["Event", "EventOutbox", "new_event"]


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    event_type: str
    # The exact request body of every delivery of this event (JSON).
    body: str
    created_at: datetime

    def to_doc(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "body": self.body,
            "created_at": self.created_at,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Event:
        return cls(
            event_id=doc["event_id"],
            event_type=doc["event_type"],
            body=doc["body"],
            created_at=doc["created_at"],
        )


def new_event(
    event_type: str, data: Mapping[str, Any], *, now: datetime, event_id: str | None = None
) -> Event:
    """A Standard Webhooks payload: `{"type", "timestamp", "data"}`, serialized once.

    `event_id` (deterministic) makes publishing the same happening twice idempotent.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    body = json.dumps(
        {
            "type": event_type,
            "timestamp": rfc3339(now),
            "data": dict(data),
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    return Event(
        event_id=event_id or time_ordered_id("evt", now),
        event_type=event_type,
        body=body,
        created_at=now,
    )


def _noop() -> None:
    return None


class EventOutbox:
    COLLECTION = "events"

    def __init__(
        self,
        *,
        mongo: MongoStore,
        queue: WorkQueue,
        webhooks: WebhookStore,
        deliveries: DeliveryStore,
        now: Callable[[], datetime] = utc_now,
        on_delivery: Callable[[], None] = _noop,
    ) -> None:
        self._mongo = mongo
        self._queue = queue
        self._webhooks = webhooks
        self._deliveries = deliveries
        self._now = now
        # told when deliveries were scheduled, so the local dispatcher need not wait for its poll
        self._on_delivery = on_delivery

    def _collection(self, scope: Scope) -> ScopedCollection:
        return self._mongo.scoped(self.COLLECTION, scope)

    async def publish(self, scope: Scope, event_type: str, data: Mapping[str, Any]) -> Event:
        """Emit an event of the namespace to its subscribed webhooks."""
        event = new_event(event_type, data, now=self._now())
        await self.publish_event(scope, event)
        return event

    async def publish_event(
        self, scope: Scope, event: Event, *, caller_retries: bool = False
    ) -> Event:
        """Idempotent by event id; returns the event as stored (the first write wins).

        With `caller_retries` the caller guarantees it calls again after a crash
        (its own work-queue row is still held, as a task's is), so the event's
        recovery row is not needed.
        """
        if not caller_retries:
            await self._queue.reserve("event", scope, event.event_id)
        stored = await self._store(scope, event)
        await self._fan_out(scope, stored)
        if not caller_retries:
            await self._queue.discard("event", event.event_id)
        return stored

    async def get(self, scope: Scope, event_id: str) -> Event | None:
        doc = await self._collection(scope).find_one({"event_id": event_id})
        return None if doc is None else Event.from_doc(doc)

    async def recover(self, claim: Claim) -> None:
        """Finish the fan-out of an event whose publisher died (a due `event` row)."""
        event = await self.get(claim.scope, claim.ref)
        if event is not None:
            await self._fan_out(claim.scope, event)
        await self._queue.done(claim)

    async def _store(self, scope: Scope, event: Event) -> Event:
        try:
            await self._collection(scope).insert_one(event.to_doc())
        except DuplicateKeyError:
            existing = await self.get(scope, event.event_id)
            if existing is not None:
                return existing
            raise
        return event

    async def _fan_out(self, scope: Scope, event: Event) -> None:
        scheduled = False
        for webhook in await self._webhooks.subscribers(scope, event.event_type):
            delivery_id = delivery_id_for(
                event_id=event.event_id, webhook_id=webhook.webhook_id, event_time=event.created_at
            )
            # the delivery first, then its row: a crash in between is repaired by `recover`
            await self._deliveries.create(
                scope,
                delivery_id=delivery_id,
                webhook_id=webhook.webhook_id,
                event_id=event.event_id,
                event_type=event.event_type,
            )
            await self._queue.schedule("delivery", scope, delivery_id, due=self._now())
            scheduled = True
        if scheduled:
            self._on_delivery()
