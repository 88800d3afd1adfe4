"""Leased work items in MongoDB: what the background workers of every replica share.

A row says "this piece of namespaced work is due at `due_at`": a task to run,
a webhook delivery to attempt, an event whose fan-out must be finished. Rows
are pointers, never data: kind, the referenced id and the Scope it lives in.
The data itself (tasks, deliveries, events) is read and written only through
`ScopedCollection`, with the Scope the claim hands out. This is the one
collection read across namespaces, because a worker cannot know in advance
which namespace has work.

Claiming is one atomic `find_one_and_update`: the oldest due row gets a fresh
random token and its `due_at` moves to the end of the lease, so a claim whose
worker dies simply becomes due again when the lease runs out (a visibility
timeout). Renewing, finishing and rescheduling all name the token, so a worker
that lost its lease cannot touch the row any more.

Crash safety without transactions follows one pattern: *reserve* the row
(due only after a grace period), write the data, then *release* the row (due
now). A crash after the reservation leaves a row that becomes due after the
grace period; the worker then finds the data missing (the write never
happened, and the caller saw an error) and drops the row, or finds it and
carries on.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.core.clock import utc_now

__all__ = ["KINDS", "RESERVE_GRACE", "Claim", "WorkQueue"]

KINDS = ("task", "delivery", "event")
RESERVE_GRACE = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Claim:
    """A leased row: only the holder of `token` may renew, finish or reschedule it."""

    kind: str
    ref: str
    scope: Scope
    token: str
    created_at: datetime


def _row_id(kind: str, ref: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown work kind {kind!r}")
    return f"{kind}:{ref}"


class WorkQueue:
    @property
    def _rows(self) -> AsyncCollection[dict[str, Any]]:
        """Taken at each call: the client behind it can be switched (MongoStore.switch)."""
        return self._mongo.work_queue

    def __init__(self, *, mongo: MongoStore, now: Callable[[], datetime] = utc_now) -> None:
        self._mongo = mongo
        self._now = now

    async def reserve(self, kind: str, scope: Scope, ref: str) -> None:
        """A row due only after RESERVE_GRACE; `release` makes it due once the data is written."""
        await self._insert(kind, scope, ref, due=self._now() + RESERVE_GRACE)

    async def release(self, kind: str, ref: str, *, due: datetime | None = None) -> None:
        """Bring an unclaimed row forward to `due` (now by default); never delays it."""
        when = due or self._now()
        await self._rows.update_one(
            {"_id": _row_id(kind, ref), "token": None, "due_at": {"$gt": when}},
            {"$set": {"due_at": when}},
        )

    async def schedule(self, kind: str, scope: Scope, ref: str, *, due: datetime) -> None:
        """Make sure a row exists and is due no later than `due` (idempotent)."""
        if not await self._insert(kind, scope, ref, due=due):
            await self.release(kind, ref, due=due)

    async def _insert(self, kind: str, scope: Scope, ref: str, *, due: datetime) -> bool:
        """True if the row is new; an existing row is left as it is."""
        try:
            await self._rows.insert_one(
                {
                    "_id": _row_id(kind, ref),
                    "kind": kind,
                    "ref": ref,
                    "namespace_id": scope.namespace_id,
                    "internal_id": scope.internal_id,
                    "due_at": due,
                    "token": None,
                    "created_at": self._now(),
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def claim(self, kind: str, *, lease: timedelta) -> Claim | None:
        """The oldest due row of `kind`, leased for `lease`; None when nothing is due."""
        now = self._now()
        token = secrets.token_hex(12)
        row = await self._rows.find_one_and_update(
            {"kind": kind, "due_at": {"$lte": now}},
            {"$set": {"token": token, "due_at": now + lease}, "$inc": {"claims": 1}},
            sort=[("due_at", 1)],
            return_document=ReturnDocument.AFTER,
        )
        if row is None:
            return None
        return Claim(
            kind=kind,
            ref=row["ref"],
            scope=Scope(internal_id=row["internal_id"], namespace_id=row["namespace_id"]),
            token=token,
            created_at=row["created_at"],
        )

    async def next_due(self, kind: str) -> datetime | None:
        """When the next row of `kind` becomes due (lets idle workers sleep just long enough)."""
        row = await self._rows.find_one({"kind": kind}, {"due_at": 1}, sort=[("due_at", 1)])
        return None if row is None else row["due_at"]

    async def renew(self, claim: Claim, *, lease: timedelta) -> bool:
        """Extend the lease; False when it was lost (expired and claimed by another worker)."""
        result = await self._rows.update_one(
            {"_id": _row_id(claim.kind, claim.ref), "token": claim.token},
            {"$set": {"due_at": self._now() + lease}},
        )
        return result.matched_count > 0

    async def done(self, claim: Claim) -> None:
        await self._rows.delete_one({"_id": _row_id(claim.kind, claim.ref), "token": claim.token})

    async def discard(self, kind: str, ref: str) -> None:
        """Drop an unclaimed row (its work was done in line); a claimed one is its holder's."""
        await self._rows.delete_one({"_id": _row_id(kind, ref), "token": None})

    async def retry_at(self, claim: Claim, due: datetime) -> None:
        """Give the row up until `due` (a retry); the next claim gets a new token."""
        await self._rows.update_one(
            {"_id": _row_id(claim.kind, claim.ref), "token": claim.token},
            {"$set": {"due_at": due, "token": None}},
        )

    async def depth(self) -> dict[str, dict[str, int]]:
        """Rows per kind: `due` now and `total` (for the queue-depth metric)."""
        now = self._now()
        out: dict[str, dict[str, int]] = {}
        for kind in KINDS:
            out[kind] = {
                "due": await self._rows.count_documents({"kind": kind, "due_at": {"$lte": now}}),
                "total": await self._rows.count_documents({"kind": kind}),
            }
        return out

    async def purge_namespace(self, namespace_id: str) -> int:
        """A deleted namespace has no work left; idempotent."""
        result = await self._rows.delete_many({"namespace_id": namespace_id})
        return result.deleted_count

    async def rows_of(self, namespace_id: str) -> list[dict[str, Any]]:
        """The rows of one namespace without internal ids (for tests and diagnostics)."""
        cursor = self._rows.find({"namespace_id": namespace_id}, {"internal_id": 0})
        return [row async for row in cursor]
