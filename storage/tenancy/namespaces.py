"""Namespaces: the isolation boundary, owned by one organization and one environment."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.core.cache import TTLCache
from storage.core.clock import utc_now
from storage.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, Reason
from storage.core.ids import NAMESPACE_ID_RE, new_namespace_id
from storage.core.pages import decode_page_token, page_of

__all__ = ["NAMESPACE_NAME_RE", "Namespace", "NamespaceNotFoundError", "NamespaceStore"]

NAMESPACE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_MAX_REF = 128


@dataclass(frozen=True, slots=True)
class Namespace:
    namespace_id: str
    internal_id: str
    name: str
    environment: str
    created_at: datetime

    def __repr__(self) -> str:
        return f"Namespace(namespace_id={self.namespace_id!r}, name={self.name!r})"


def _from_doc(doc: dict[str, object]) -> Namespace:
    return Namespace(
        namespace_id=str(doc["_id"]),
        internal_id=str(doc["internal_id"]),
        name=str(doc["name"]),
        environment=str(doc["environment"]),
        created_at=doc["created_at"],  # type: ignore[arg-type]
    )


class NamespaceNotFoundError(NotFoundError):
    """One answer for unknown, deleting, other-environment and other-organization
    namespaces: the message and the reason never tell them apart."""

    default_reason = Reason.NAMESPACE_NOT_FOUND

    def __init__(self, message: str = "namespace not found") -> None:
        super().__init__(message)


class NamespaceStore:
    """Namespaces of an organization; every query is filtered on its internal_id."""

    @property
    def _collection(self) -> AsyncCollection[dict[str, Any]]:
        """Taken at each call: the client behind it can be switched (MongoStore.switch)."""
        return self._mongo.namespaces

    def __init__(
        self,
        *,
        mongo: MongoStore,
        cache_ttl_s: float = 5.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._mongo = mongo
        self._now = now
        # (internal_id, reference) -> Namespace; dropped on delete via the invalidation bus.
        self._cache: TTLCache[tuple[str, str], Namespace] = TTLCache(
            ttl_s=cache_ttl_s, max_entries=50_000
        )

    def forget(self, namespace_id: str) -> None:
        self._cache.pop_where(lambda ns: ns.namespace_id == namespace_id)

    def forget_all(self) -> None:
        self._cache.clear()

    async def create(self, *, internal_id: str, name: str, environment: str) -> Namespace:
        if not NAMESPACE_NAME_RE.match(name):
            raise InvalidArgumentError(
                "name must be 1-63 characters of a-z, 0-9 and '-', starting with a letter",
                field="name",
            )
        doc = {
            "_id": new_namespace_id(),
            "internal_id": internal_id,
            "name": name,
            "environment": environment,
            "state": "active",
            "created_at": self._now(),
        }
        try:
            await self._collection.insert_one(doc)
        except DuplicateKeyError:
            raise AlreadyExistsError(f"a namespace named {name!r} already exists") from None
        return _from_doc(doc)

    def cached(self, *, internal_id: str, environment: str, reference: str) -> Namespace | None:
        """`resolve` when this process has the answer cached (no I/O); else None."""
        cached = self._cache.get((internal_id, reference))
        if cached is not None and cached.environment != environment:
            raise NamespaceNotFoundError()
        return cached

    async def resolve(self, *, internal_id: str, environment: str, reference: str) -> Namespace:
        """A namespace by id or name, inside one organization and environment.

        Unknown, deleting, other-environment and other-organization namespaces are
        all the same NotFoundError: nothing tells them apart.
        """
        cached = self.cached(internal_id=internal_id, environment=environment, reference=reference)
        if cached is None:
            if len(reference) > _MAX_REF:
                raise InvalidArgumentError(
                    f"x-namespace must be at most {_MAX_REF} characters",
                    reason=Reason.METADATA_INVALID,
                    metadata={"header": "x-namespace"},
                )
            field = "_id" if NAMESPACE_ID_RE.match(reference) else "name"
            if field == "name" and not NAMESPACE_NAME_RE.match(reference):
                raise NamespaceNotFoundError()
            generation = self._cache.generation  # a deletion during the read moves it
            doc = await self._collection.find_one(
                {"internal_id": internal_id, field: reference, "state": "active"}
            )
            if doc is None:
                raise NamespaceNotFoundError()
            cached = _from_doc(doc)
            self._cache.put((internal_id, reference), cached, if_generation=generation)
            if cached.environment != environment:
                raise NamespaceNotFoundError()
        return cached

    async def ids_exist(
        self, *, internal_id: str, environment: str, references: list[str]
    ) -> list[str]:
        """Namespace ids for ids or names; NotFoundError names the first unknown one."""
        out: list[str] = []
        for reference in references:
            try:
                namespace = await self.resolve(
                    internal_id=internal_id, environment=environment, reference=reference
                )
            except NotFoundError:
                raise NamespaceNotFoundError(
                    f"namespace {reference[:_MAX_REF]!r} not found"
                ) from None
            out.append(namespace.namespace_id)
        return out

    async def active_ids(self, *, internal_id: str, environment: str | None = None) -> list[str]:
        """Every active namespace of an organization (of one environment, if given)."""
        query: dict[str, object] = {"internal_id": internal_id, "state": "active"}
        if environment is not None:
            query["environment"] = environment
        cursor = self._collection.find(query, {"_id": 1}).sort("_id", 1)
        return [str(doc["_id"]) async for doc in cursor]

    async def list_page(
        self,
        *,
        internal_id: str,
        environment: str,
        only_ids: frozenset[str] | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Namespace], str]:
        after = decode_page_token(page_token, kind="ns", id_pattern=NAMESPACE_ID_RE)
        query: dict[str, object] = {
            "internal_id": internal_id,
            "environment": environment,
            "state": "active",
        }
        id_filter: dict[str, object] = {}
        if after is not None:
            id_filter["$gt"] = after
        if only_ids is not None:
            id_filter["$in"] = sorted(only_ids)
        if id_filter:
            query["_id"] = id_filter
        cursor = self._collection.find(query).sort("_id", 1).limit(page_size + 1)
        docs = [doc async for doc in cursor]
        return page_of(docs, page_size=page_size, kind="ns", key="_id", build=_from_doc)

    async def mark_deleting(self, *, internal_id: str, namespace_id: str) -> bool:
        """From here on the namespace resolves nowhere; the data cascade may follow."""
        result = await self._collection.update_one(
            {"internal_id": internal_id, "_id": namespace_id},
            {"$set": {"state": "deleting", "deleted_at": self._now()}},
        )
        self.forget(namespace_id)
        return result.matched_count > 0

    async def deleting(self) -> list[Scope]:
        """Namespaces whose deletion started but did not finish (all organizations)."""
        cursor = self._collection.find({"state": "deleting"}, {"internal_id": 1})
        return [Scope(internal_id=d["internal_id"], namespace_id=d["_id"]) async for d in cursor]

    async def remove(self, *, internal_id: str, namespace_id: str) -> None:
        await self._collection.delete_one({"internal_id": internal_id, "_id": namespace_id})
        self.forget(namespace_id)
