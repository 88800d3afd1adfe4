"""API keys in MongoDB: stored as SHA-256 digests of their secrets, never the secrets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from storage.backends.mongo import MongoStore
from storage.core.clock import utc_now
from storage.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, Reason
from storage.core.ids import KEY_ID_RE
from storage.core.key_secrets import mint_secret
from storage.core.pages import decode_page_token, page_of
from storage.core.plans import Limit
from storage.core.rotation import check_grace, retire_previous
from storage.tenancy.key_reach import PERMISSIONS, KeyReach
from storage.tenancy.key_records import (
    KeyRecord,
    KeySecret,
    idle_since_before,
    key_from_doc,
    new_key_doc,
    rate_limit_doc,
    retired_doc,
    secret_doc,
)

__all__ = [
    "MAX_KEYS_PER_ORGANIZATION",
    "PERMISSIONS",
    "KeyReach",
    "KeyRecord",
    "KeySecret",
    "KeyStore",
    "idle_since_before",
    "key_from_doc",
]

MAX_GRACE = timedelta(days=30)
# keys an organization may hold that are not revoked (MESHGATE_MAX_KEYS_PER_ORGANIZATION)
MAX_KEYS_PER_ORGANIZATION = 10_000


class KeyStore:
    """Key documents, looked up by secret digest (unique index on `secrets.digest`)."""

    @property
    def _collection(self) -> AsyncCollection[dict[str, Any]]:
        """Taken at each call: the client behind it can be switched (MongoStore.switch)."""
        return self._mongo.keys

    def __init__(
        self,
        *,
        mongo: MongoStore,
        now: Callable[[], datetime] = utc_now,
        max_keys: int = MAX_KEYS_PER_ORGANIZATION,
    ) -> None:
        self._mongo = mongo
        self._now = now
        self._max_keys = max_keys

    async def create(
        self,
        *,
        organization_id: str,
        name: str,
        environment: str,
        permissions: frozenset[str],
        namespace_ids: list[str],
        expires_at: datetime | None,
        rate_limit: Limit | None = None,
        rate_limit_dry_run: bool = False,
        bound_peers: tuple[str, ...] = (),
    ) -> tuple[KeyRecord, str]:
        """The new key and its secret (returned once, never stored).

        An organization holds at most `max_keys` keys that are not revoked (each is a stored
        document and a dimension of usage analytics); revoking frees a place. The count is
        read before the insert: creations racing on several replicas can each pass it once.
        """
        now = self._now()
        if expires_at is not None and expires_at <= now:
            raise InvalidArgumentError("expire_time must lie in the future", field="expire_time")
        held = await self._collection.count_documents(
            {"organization_id": organization_id, "revoked_at": None}, limit=self._max_keys
        )
        if held >= self._max_keys:
            raise FailedPreconditionError(
                f"the organization holds {self._max_keys} keys that are not revoked, the most"
                " it may hold; revoke keys it no longer uses first"
            )
        doc, secret = new_key_doc(
            organization_id=organization_id,
            name=name,
            environment=environment,
            permissions=permissions,
            namespace_ids=namespace_ids,
            expires_at=expires_at,
            rate_limit=rate_limit,
            rate_limit_dry_run=rate_limit_dry_run,
            bound_peers=bound_peers,
            now=now,
        )
        await self._collection.insert_one(doc)
        return key_from_doc(doc), secret

    async def within_reach(
        self, *, organization_id: str, environment: str, reach: KeyReach, key_ids: set[str]
    ) -> frozenset[str]:
        """Which of `key_ids` are keys of the organization and environment within `reach`
        (revoked ones included: their usage is still theirs)."""
        if not key_ids:
            return frozenset()
        cursor = self._collection.find(
            {
                "_id": {"$in": sorted(key_ids)},
                "organization_id": organization_id,
                "environment": environment,
                **reach.query(),
            },
            projection={"_id": 1},
        )
        return frozenset([str(doc["_id"]) async for doc in cursor])

    async def find_by_digest(self, digest: str) -> KeyRecord | None:
        doc = await self._collection.find_one({"secrets.digest": digest})
        return None if doc is None else key_from_doc(doc)

    @staticmethod
    def _owned(
        organization_id: str, environment: str, key_id: str, reach: KeyReach
    ) -> dict[str, Any]:
        """A key is visible only to its own organization and environment, within `reach`."""
        if not KEY_ID_RE.match(key_id):
            raise InvalidArgumentError("key_id is malformed (expected key_...)", field="key_id")
        return {
            "_id": key_id,
            "organization_id": organization_id,
            "environment": environment,
            **reach.query(),
        }

    async def get(
        self, *, organization_id: str, environment: str, key_id: str, reach: KeyReach
    ) -> KeyRecord:
        doc = await self._collection.find_one(
            self._owned(organization_id, environment, key_id, reach)
        )
        if doc is None:
            raise NotFoundError("key not found")
        return key_from_doc(doc)

    async def active_in(self, *, organization_id: str, key_id: str) -> KeyRecord:
        """A key of the organization that is neither revoked nor expired (any environment):
        how the rate-limit service finds a key named in a descriptor. NotFoundError else."""
        if not KEY_ID_RE.match(key_id):
            raise NotFoundError("key not found")
        doc = await self._collection.find_one({"_id": key_id, "organization_id": organization_id})
        if doc is None:
            raise NotFoundError("key not found")
        record = key_from_doc(doc)
        if record.state(self._now()) != "active":
            raise NotFoundError("key not found")
        return record

    async def list_page(
        self,
        *,
        organization_id: str,
        environment: str,
        reach: KeyReach,
        page_size: int,
        page_token: str,
        idle_for: timedelta | None = None,
    ) -> tuple[list[KeyRecord], str]:
        """`idle_for`: only keys unused for longer (never used: since their creation)."""
        after = decode_page_token(page_token, kind="key", id_pattern=KEY_ID_RE)
        query: dict[str, Any] = {
            "organization_id": organization_id,
            "environment": environment,
            **reach.query(),
        }
        if idle_for is not None:
            if idle_for < timedelta(0):
                raise InvalidArgumentError("idle_for must not be negative", field="idle_for")
            query["$or"] = idle_since_before(self._now() - idle_for)
        if after is not None:
            query["_id"] = {"$gt": after}
        cursor = self._collection.find(query).sort("_id", 1).limit(page_size + 1)
        docs = [doc async for doc in cursor]
        return page_of(docs, page_size=page_size, kind="key", key="_id", build=key_from_doc)

    async def rotate(
        self,
        *,
        organization_id: str,
        environment: str,
        key_id: str,
        reach: KeyReach,
        grace: timedelta,
    ) -> tuple[KeyRecord, str, datetime]:
        """A new secret; the previous ones stop working after `grace` (0 = now).

        The write is conditional on the secrets as read: of two rotations that read
        the same secrets, the second fails (FailedPreconditionError) instead of
        writing back the secrets the first one retired, so a scheduled rotation with
        a long grace cannot bring back a secret an incident rotation cut off.
        """
        check_grace(grace, maximum=MAX_GRACE)
        owned = self._owned(organization_id, environment, key_id, reach)
        read = await self._collection.find_one(owned)
        if read is None:
            raise NotFoundError("key not found")
        current = key_from_doc(read)
        now = self._now()
        state = current.state(now)
        if state != "active":
            raise (
                NotFoundError("key not found")
                if state == "revoked"
                else InvalidArgumentError(f"a {state} key cannot be rotated")
            )
        kept, cutoff = retire_previous(
            current.secrets,
            now=now,
            grace=grace,
            deadline_of=lambda s: s.not_after,
            with_deadline=retired_doc,
        )
        minted = mint_secret(current.environment)
        doc = await self._collection.find_one_and_update(
            {**owned, "revoked_at": None, "secrets": read.get("secrets", [])},
            {"$set": {"secrets": [*kept, secret_doc(minted, now)], "rotated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            now_stored = await self._collection.find_one(owned, {"revoked_at": 1})
            if now_stored is None or now_stored.get("revoked_at") is not None:
                raise NotFoundError("key not found")
            raise FailedPreconditionError(
                "the key was rotated concurrently; read it again and retry",
                reason=Reason.CONCURRENT_CHANGE,
            )
        return key_from_doc(doc), minted.secret, cutoff

    async def set_binding(
        self,
        *,
        organization_id: str,
        environment: str,
        key_id: str,
        reach: KeyReach,
        bound_peers: tuple[str, ...],
    ) -> tuple[KeyRecord, tuple[str, ...]]:
        """Replace the key's workload binding (empty: any peer); the key as it is now and
        the binding it had. A revoked key is NOT_FOUND, as for `rotate`."""
        owned = self._owned(organization_id, environment, key_id, reach)
        doc = await self._collection.find_one_and_update(
            {**owned, "revoked_at": None},
            {"$set": {"bound_peers": list(bound_peers)}},
            return_document=ReturnDocument.BEFORE,
        )
        if doc is None:
            raise NotFoundError("key not found")
        before = key_from_doc(doc)
        return (
            replace(before, bound_peers=bound_peers),
            before.bound_peers,
        )

    async def set_rate_limit(
        self,
        *,
        organization_id: str,
        environment: str,
        key_id: str,
        reach: KeyReach,
        rate_limit: Limit | None,
        dry_run: bool,
    ) -> KeyRecord:
        """Replace the key's own rate limit (None: the plan's alone), enforced or in dry run.
        A revoked key is NOT_FOUND, as for `rotate`."""
        owned = self._owned(organization_id, environment, key_id, reach)
        doc = await self._collection.find_one_and_update(
            {**owned, "revoked_at": None},
            {"$set": {"rate_limit": rate_limit_doc(rate_limit, dry_run)}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise NotFoundError("key not found")
        return key_from_doc(doc)

    async def revoke(
        self, *, organization_id: str, environment: str, key_id: str, reach: KeyReach
    ) -> KeyRecord:
        """Idempotent: revoking a revoked key returns it unchanged."""
        owned = self._owned(organization_id, environment, key_id, reach)
        doc = await self._collection.find_one_and_update(
            {**owned, "revoked_at": None},
            {"$set": {"revoked_at": self._now()}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # revoked already, or not this caller's
            return await self.get(
                organization_id=organization_id, environment=environment, key_id=key_id, reach=reach
            )
        return key_from_doc(doc)

    async def touch(self, used: dict[str, datetime]) -> None:
        """Record last-used times (batched by the verifier; never on the hot path)."""
        for key_id, when in used.items():
            await self._collection.update_one(
                {"_id": key_id, "$or": [{"last_used_at": None}, {"last_used_at": {"$lt": when}}]},
                {"$set": {"last_used_at": when}},
            )
