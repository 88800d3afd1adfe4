"""Organizations: public organization_id, hidden internal_id (the storage primary key)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.core.cache import TTLCache
from storage.core.clock import utc_now
from storage.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from storage.core.ids import ORGANIZATION_ID_RE, new_internal_id, new_organization_id

__all__ = ["MAX_IDLE_DAYS", "KeyIdlePolicy", "Organization", "OrganizationStore"]

MAX_IDLE_DAYS = 3650


@dataclass(frozen=True, slots=True)
class KeyIdlePolicy:
    """Keys of one environment unused for `idle_days` are disabled (0: never); a
    `key.expiring` notice goes out `notice_days` before (0: none)."""

    environment: str
    idle_days: int = 0
    notice_days: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.idle_days <= MAX_IDLE_DAYS:
            raise InvalidArgumentError(
                f"idle_days must be 0 (off) to {MAX_IDLE_DAYS}", field="policy.idle_days"
            )
        if self.notice_days < 0 or (self.notice_days and self.notice_days >= self.idle_days):
            raise InvalidArgumentError(
                "notice_days must be 0 (none) or less than idle_days", field="policy.notice_days"
            )


@dataclass(frozen=True, slots=True)
class Organization:
    internal_id: str
    organization_id: str
    name: str
    plan: str
    created_at: datetime

    def __repr__(self) -> str:
        return f"Organization(organization_id={self.organization_id!r}, name={self.name!r})"


def _from_doc(doc: dict[str, object]) -> Organization:
    return Organization(
        internal_id=str(doc["_id"]),
        organization_id=str(doc["organization_id"]),
        name=str(doc["name"]),
        plan=str(doc["plan"]),
        created_at=doc["created_at"],  # type: ignore[arg-type]
    )


class OrganizationStore:
    """Organizations by public id, with a per-process cache of the id mapping."""

    @property
    def _collection(self) -> AsyncCollection[dict[str, Any]]:
        """Taken at each call: the client behind it can be switched (MongoStore.switch)."""
        return self._mongo.organizations

    def __init__(
        self,
        *,
        mongo: MongoStore,
        cache_ttl_s: float = 300.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._mongo = mongo
        self._cache: TTLCache[str, Organization] = TTLCache(ttl_s=cache_ttl_s, max_entries=10_000)
        self._now = now

    @property
    def cache(self) -> TTLCache[str, Organization]:
        return self._cache

    async def create(self, *, name: str, plan: str) -> Organization:
        now = self._now()
        doc = {
            "_id": new_internal_id(),
            "organization_id": new_organization_id(),
            "name": name,
            "plan": plan,
            "created_at": now,
        }
        try:
            await self._collection.insert_one(doc)
        except DuplicateKeyError:  # pragma: no cover - 119 random bits
            raise AlreadyExistsError("organization id collision; retry") from None
        return _from_doc(doc)

    def cached(self, organization_id: str) -> Organization | None:
        """The organization if this process has it cached (no I/O); else None: call `get`."""
        return self._cache.get(organization_id)

    async def get(self, organization_id: str) -> Organization:
        """The organization, or NotFoundError; cached (the id mapping never changes)."""
        cached = self._cache.get(organization_id)
        if cached is not None:
            return cached
        if not ORGANIZATION_ID_RE.match(organization_id):
            raise NotFoundError("organization not found")
        doc = await self._collection.find_one({"organization_id": organization_id})
        if doc is None:
            raise NotFoundError("organization not found")
        organization = _from_doc(doc)
        self._cache.put(organization_id, organization)
        return organization

    async def key_idle_policy(self, organization_id: str, environment: str) -> KeyIdlePolicy:
        """Read from the store every time (the cached organization does not carry it)."""
        doc = await self._collection.find_one(
            {"organization_id": organization_id}, {f"key_idle_policies.{environment}": 1}
        )
        if doc is None:
            raise NotFoundError("organization not found")
        stored = (doc.get("key_idle_policies") or {}).get(environment) or {}
        return KeyIdlePolicy(
            environment=environment,
            idle_days=int(stored.get("idle_days", 0)),
            notice_days=int(stored.get("notice_days", 0)),
        )

    async def set_key_idle_policy(self, organization_id: str, policy: KeyIdlePolicy) -> None:
        field = f"key_idle_policies.{policy.environment}"
        update = (
            {"$set": {field: {"idle_days": policy.idle_days, "notice_days": policy.notice_days}}}
            if policy.idle_days
            else {"$unset": {field: ""}}
        )
        result = await self._collection.update_one({"organization_id": organization_id}, update)
        if result.matched_count == 0:
            raise NotFoundError("organization not found")

    async def key_idle_policies(self) -> list[tuple[str, KeyIdlePolicy]]:
        """Every policy that is on: (organization_id, policy), for the idle-key job."""
        found: list[tuple[str, KeyIdlePolicy]] = []
        cursor = self._collection.find(
            {"key_idle_policies": {"$exists": True}},
            {"organization_id": 1, "key_idle_policies": 1},
        )
        async for doc in cursor:
            for environment, stored in (doc.get("key_idle_policies") or {}).items():
                if stored and stored.get("idle_days"):
                    found.append(
                        (
                            str(doc["organization_id"]),
                            KeyIdlePolicy(
                                environment=environment,
                                idle_days=int(stored["idle_days"]),
                                notice_days=int(stored.get("notice_days", 0)),
                            ),
                        )
                    )
        return found

    async def count(self) -> int:
        return await self._collection.count_documents({})
