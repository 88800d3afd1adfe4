"""Webhooks, in MongoDB, only through ScopedCollection (their deliveries:
storage/webhooks/deliveries.py).

A webhook belongs to one namespace. Its signing secrets (`whsec_` + base64 of
32 random bytes) are sealed at rest (storage/webhooks/sealing.py) and leave this
module only towards the dispatcher, never in a record: `WebhookRecord` has no
secret field, so no response can carry one by mistake.

"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope, ScopedCollection
from storage.core.clock import utc_now
from storage.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, Reason
from storage.core.ids import (
    TIME_ORDERED_BODY,
    prefixed_id_re,
    time_ordered_id,
)
from storage.core.pages import decode_page_token, page_of
from storage.core.rotation import check_grace, in_force, retire_previous
from storage.webhooks.sealing import SealedSecretError, SecretBox

__all__ = [
    "EVENT_TYPES",
    "MAX_WEBHOOKS_PER_NAMESPACE",
    "WEBHOOK_ID_RE",
    "WILDCARD",
    "WebhookRecord",
    "WebhookStore",
    "check_description",
    "check_event_types",
    "check_webhook_id",
]

EVENT_TYPES = (
    "task.completed",
    "task.failed",
    "task.canceled",
    "credits.threshold",
    "key.revoked",
    "key.expiring",
    "key.disabled",
)
WILDCARD = "*"
MAX_EVENT_TYPES = 10
MAX_WEBHOOKS_PER_NAMESPACE = 25
MAX_DESCRIPTION = 256
MAX_GRACE = timedelta(days=7)
MAX_SECRETS = 5
WEBHOOK_ID_RE = prefixed_id_re("wh", length=TIME_ORDERED_BODY)
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def check_event_types(values: Sequence[str]) -> tuple[str, ...]:
    """1-10 known event types, or the wildcard alone; duplicates are dropped."""
    if not values:
        raise InvalidArgumentError(
            "event_types must name at least one event type, or '*'", field="webhook.event_types"
        )
    if len(values) > MAX_EVENT_TYPES:
        raise InvalidArgumentError(
            f"event_types may list at most {MAX_EVENT_TYPES} entries", field="webhook.event_types"
        )
    unknown = [v for v in values if v not in EVENT_TYPES and v != WILDCARD]
    if unknown:
        raise InvalidArgumentError(
            f"event_types: unknown event type {unknown[0][:64]!r}; known: "
            f"{', '.join(EVENT_TYPES)} or '*'",
            field="webhook.event_types",
        )
    if WILDCARD in values:
        return (WILDCARD,)
    return tuple(sorted(set(values)))


def check_description(value: str) -> str:
    if len(value) > MAX_DESCRIPTION or not value.isprintable():
        raise InvalidArgumentError(
            f"description must be at most {MAX_DESCRIPTION} printable characters",
            field="webhook.description",
        )
    return value


def check_webhook_id(webhook_id: str) -> str:
    if not WEBHOOK_ID_RE.match(webhook_id):
        raise InvalidArgumentError("webhook_id is malformed (expected wh_...)", field="webhook_id")
    return webhook_id


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    webhook_id: str
    url: str
    event_types: tuple[str, ...]
    enabled: bool
    description: str
    disabled_reason: str
    created_at: datetime
    updated_at: datetime
    secret_rotated_at: datetime | None


def _webhook(doc: Mapping[str, Any]) -> WebhookRecord:
    return WebhookRecord(
        webhook_id=doc["webhook_id"],
        url=doc["url"],
        event_types=tuple(doc["event_types"]),
        enabled=bool(doc["enabled"]),
        description=doc.get("description") or "",
        disabled_reason=doc.get("disabled_reason") or "",
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        secret_rotated_at=doc.get("secret_rotated_at"),
    )


_NO_SECRETS = {"secrets": 0}


class WebhookStore:
    COLLECTION = "webhooks"

    def __init__(
        self, *, mongo: MongoStore, box: SecretBox, now: Callable[[], datetime] = utc_now
    ) -> None:
        self._mongo = mongo
        self._box = box
        self._now = now

    def _collection(self, scope: Scope) -> ScopedCollection:
        return self._mongo.scoped(self.COLLECTION, scope)

    def _sealed(self, scope: Scope, webhook_id: str, secret: str, now: datetime) -> dict[str, Any]:
        return {
            "sealed": self._box.seal(secret, context=f"{scope.namespace_id}/{webhook_id}"),
            "created_at": now,
            "not_after": None,
        }

    async def create(
        self, scope: Scope, *, url: str, event_types: tuple[str, ...], description: str
    ) -> tuple[WebhookRecord, str]:
        """The webhook and its first secret (returned once)."""
        collection = self._collection(scope)
        if await collection.count_documents({}) >= MAX_WEBHOOKS_PER_NAMESPACE:
            raise FailedPreconditionError(
                f"a namespace may have at most {MAX_WEBHOOKS_PER_NAMESPACE} webhooks"
            )
        now = self._now()
        webhook_id = time_ordered_id("wh", now)
        secret = new_secret()
        doc = {
            "webhook_id": webhook_id,
            "url": url,
            "event_types": list(event_types),
            "enabled": True,
            "description": description,
            "disabled_reason": "",
            "created_at": now,
            "updated_at": now,
            "secret_rotated_at": None,
            "secrets": [self._sealed(scope, webhook_id, secret, now)],
            "sealed_by": self._box.primary,
        }
        await collection.insert_one(doc)
        return _webhook(doc), secret

    async def get(self, scope: Scope, webhook_id: str) -> WebhookRecord:
        doc = await self._collection(scope).find_one(
            {"webhook_id": check_webhook_id(webhook_id)}, projection=_NO_SECRETS
        )
        if doc is None:
            raise NotFoundError("webhook not found")
        return _webhook(doc)

    async def list_page(
        self, scope: Scope, *, page_size: int, page_token: str
    ) -> tuple[list[WebhookRecord], str]:
        after = decode_page_token(page_token, kind="wh", id_pattern=WEBHOOK_ID_RE)
        query = {"webhook_id": {"$gt": after}} if after else {}
        docs = await self._collection(scope).find(
            query, sort=[("webhook_id", 1)], limit=page_size + 1, projection=_NO_SECRETS
        )
        return page_of(docs, page_size=page_size, kind="wh", key="webhook_id", build=_webhook)

    async def subscribers(self, scope: Scope, event_type: str) -> list[WebhookRecord]:
        """Enabled webhooks of the namespace that asked for `event_type`."""
        docs = await self._collection(scope).find(
            {"enabled": True, "event_types": {"$in": [event_type, WILDCARD]}},
            sort=[("webhook_id", 1)],
            projection=_NO_SECRETS,
        )
        return [_webhook(doc) for doc in docs]

    async def update(
        self, scope: Scope, webhook_id: str, changes: Mapping[str, Any]
    ) -> WebhookRecord:
        """`changes` holds any of url, event_types, enabled, description (already checked)."""
        fields: dict[str, Any] = {"updated_at": self._now()}
        for name in ("url", "description", "enabled"):
            if name in changes:
                fields[name] = changes[name]
        if "event_types" in changes:
            fields["event_types"] = list(changes["event_types"])
        if changes.get("enabled") is True:
            fields["disabled_reason"] = ""
        doc = await self._collection(scope).find_one_and_update(
            {"webhook_id": check_webhook_id(webhook_id)}, {"$set": fields}, projection=_NO_SECRETS
        )
        if doc is None:
            raise NotFoundError("webhook not found")
        return _webhook(doc)

    async def disable(self, scope: Scope, webhook_id: str, *, reason: str) -> None:
        await self._collection(scope).update_one(
            {"webhook_id": webhook_id},
            {"$set": {"enabled": False, "disabled_reason": reason, "updated_at": self._now()}},
        )

    async def rotate(
        self, scope: Scope, webhook_id: str, *, grace: timedelta
    ) -> tuple[WebhookRecord, str, datetime]:
        """A new secret; the previous ones keep signing until now + grace."""
        check_grace(grace, maximum=MAX_GRACE)
        collection = self._collection(scope)
        current = await collection.find_one({"webhook_id": check_webhook_id(webhook_id)})
        if current is None:
            raise NotFoundError("webhook not found")
        now = self._now()
        kept, cutoff = retire_previous(
            current.get("secrets", ()),
            now=now,
            grace=grace,
            deadline_of=lambda s: s.get("not_after"),
            with_deadline=lambda s, not_after: {**s, "not_after": not_after},
        )
        # the kept secrets move to the primary sealing key too: `sealed_by` stays true
        context = f"{scope.namespace_id}/{webhook_id}"
        kept = [
            {**k, "sealed": self._box.reseal(k["sealed"], context=context)}
            for k in kept[-(MAX_SECRETS - 1) :]
        ]
        secret = new_secret()
        doc = await collection.find_one_and_update(
            # only if nobody rotated in between: a concurrent rotation's secret must not vanish
            {"webhook_id": webhook_id, "secret_rotated_at": current.get("secret_rotated_at")},
            {
                "$set": {
                    "secrets": [*kept, self._sealed(scope, webhook_id, secret, now)],
                    "sealed_by": self._box.primary,
                    "secret_rotated_at": now,
                    "updated_at": now,
                }
            },
            projection=_NO_SECRETS,
        )
        if doc is None:
            raise FailedPreconditionError(
                "the webhook's secret was rotated concurrently; retry",
                reason=Reason.CONCURRENT_CHANGE,
            )
        return _webhook(doc), secret, cutoff

    async def for_delivery(
        self, scope: Scope, webhook_id: str
    ) -> tuple[WebhookRecord, list[str]] | None:
        """The webhook and the secrets that sign now (the newest, and older ones still in a
        rotation grace period); for the dispatcher only."""
        doc = await self._collection(scope).find_one({"webhook_id": webhook_id})
        if doc is None:
            return None
        now = self._now()
        secrets_now = [
            self._box.open(s["sealed"], context=f"{scope.namespace_id}/{webhook_id}")
            for s in doc.get("secrets", ())
            if in_force(s.get("not_after"), now)
        ]
        return _webhook(doc), secrets_now

    async def all(self, scope: Scope) -> list[WebhookRecord]:
        """Every webhook of the namespace (at most MAX_WEBHOOKS_PER_NAMESPACE), no secrets."""
        docs = await self._collection(scope).find(
            {}, sort=[("webhook_id", 1)], projection=_NO_SECRETS
        )
        return [_webhook(doc) for doc in docs]

    async def restore(self, scope: Scope, record: WebhookRecord) -> str:
        """Writes a webhook read from a backup under its own id, with a new secret (a backup
        holds none), and returns the secret. Idempotent by webhook_id: writing the same
        webhook again replaces it, and its secret, so a retried restore ends the same."""
        now = self._now()
        webhook_id = check_webhook_id(record.webhook_id)
        secret = new_secret()
        await self._collection(scope).update_one(
            {"webhook_id": webhook_id},
            {
                "$set": {
                    "url": record.url,
                    "event_types": list(record.event_types),
                    "enabled": record.enabled,
                    "description": record.description,
                    "disabled_reason": record.disabled_reason,
                    "created_at": record.created_at,
                    "updated_at": now,
                    "secret_rotated_at": None,
                    "secrets": [self._sealed(scope, webhook_id, secret, now)],
                    "sealed_by": self._box.primary,
                }
            },
            upsert=True,
        )
        return secret

    async def reseal_pending(self) -> tuple[int, int]:
        """Re-seals under the primary key the secrets of every webhook sealed (even partly)
        under another key; returns how many were re-sealed, and how many could not be
        opened with the configured keys (left as they are, and counted every round).

        Every write of a webhook's secrets records the key that sealed them all
        (`sealed_by`), so the webhooks left to do are found by one equality. That
        scan reads pointers across namespaces (scope and webhook_id, like the work
        queue); each webhook is then read and written through its own scope, with
        a compare-and-set on what was read: a rotation or another replica's
        re-seal in between wins, and this one is skipped (the next round looks
        again). Safe on many replicas, and idempotent."""
        pointers = self._mongo.database[self.COLLECTION].find(
            {"sealed_by": {"$ne": self._box.primary}},
            {"_id": 0, "namespace_id": 1, "internal_id": 1, "webhook_id": 1},
        )
        resealed = unopened = 0
        async for pointer in pointers:
            scope = Scope(internal_id=pointer["internal_id"], namespace_id=pointer["namespace_id"])
            try:
                resealed += await self._reseal(scope, pointer["webhook_id"])
            except SealedSecretError:
                unopened += 1
        return resealed, unopened

    async def _reseal(self, scope: Scope, webhook_id: str) -> int:
        collection = self._collection(scope)
        current = await collection.find_one({"webhook_id": webhook_id})
        if current is None or current.get("sealed_by") == self._box.primary:
            return 0
        context = f"{scope.namespace_id}/{webhook_id}"
        secrets_now = [
            {**s, "sealed": self._box.reseal(s["sealed"], context=context)}
            for s in current.get("secrets", ())
        ]
        return await collection.update_one(
            {
                "webhook_id": webhook_id,
                "secret_rotated_at": current.get("secret_rotated_at"),
                "sealed_by": current.get("sealed_by"),
            },
            {"$set": {"secrets": secrets_now, "sealed_by": self._box.primary}},
        )

    async def delete(self, scope: Scope, webhook_id: str) -> None:
        if not await self._collection(scope).delete_one(
            {"webhook_id": check_webhook_id(webhook_id)}
        ):
            raise NotFoundError("webhook not found")
