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
from storage.core.errors import AlreadyExistsError, NotFoundError
from storage.core.ids import ORGANIZATION_ID_RE, new_internal_id, new_organization_id

__all__ = ["Organization", "OrganizationStore"]


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

    async def count(self) -> int:
        return await self._collection.count_documents({})
