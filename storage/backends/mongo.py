"""MongoDB connection and the collections of the secure core, with their indexes.

Against a replica set meshgate needs (docs/operations.md, MongoDB guarantees):
writes acknowledged by a majority (`w=majority`), so a failover never rolls
back a key, a revocation or a ledger row a caller was told about; reads of
majority-committed data only (`readConcernLevel=majority`), so no decision is
taken on a write that a failover could still roll back; reads from the primary
only, because meshgate reads what it has just written (a secondary may lag);
and retryable writes and reads, so one failover costs a retry, not an error.
The URI may set the first four otherwise; the read preference is always
primary. Every multi-document change is built to need no transaction
(single-document atomic updates, idempotent ids, the outbox and work-queue
patterns), so a standalone server and the embedded engine serve too.

Index creation is idempotent (the same definitions every start), so replicas
starting together against one database each ask for the same indexes and
MongoDB builds each once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from pymongo import ASCENDING, AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from storage.backends.failures import heartbeat_proves_unreachable
from storage.backends.scoped import Scope, ScopedCollection
from storage.backends.tracing import MongoCommandSpans

__all__ = [
    "NAMESPACED_COLLECTIONS",
    "SAFE_DEFAULTS",
    "CheckOutcome",
    "MongoStore",
    "client_options",
]

# Every collection holding namespaced data; a namespace deletion empties each of them.
NAMESPACED_COLLECTIONS = (
    "documents",
    "vector_stores",
    "tasks",
    "webhooks",
    "events",
    "deliveries",
    # the marker of a namespace's restore from a backup (storage/data/backup.py)
    "restores",
)

Document = dict[str, Any]

# What meshgate needs of a replica set, unless the URI's options say otherwise.
SAFE_DEFAULTS: dict[str, Any] = {
    "w": "majority",
    "readConcernLevel": "majority",
    "retryWrites": True,
    "retryReads": True,
}


def client_options(uri: str) -> dict[str, Any]:
    """The guarantees the URI leaves unset, and the read preference, which is always primary
    (PyMongo lets keyword options win over the URI's)."""
    named = {key.lower() for key, _ in parse_qsl(urlsplit(uri).query)}
    options = {k: v for k, v in SAFE_DEFAULTS.items() if k.lower() not in named}
    options["readPreference"] = "primary"
    return options


class CheckOutcome(Protocol):
    """Told each heartbeat's outcome: up, or down and whether the error proves MongoDB
    unreachable (a refused or lost connection) rather than slow (a timeout)."""

    def __call__(self, up: bool, reason: str, *, proves_down: bool) -> None: ...


class _DriverSignals(monitoring.ConnectionPoolListener, monitoring.ServerHeartbeatListener):
    """What the driver learns about MongoDB's reachability, given to the breaker
    (`MongoStore.on_driver_signals`): a cleared connection pool is a hint (a heartbeat that
    missed its deadline on a busy host clears it too), a heartbeat's outcome is a check.
    The other pool events are ignored."""

    def __init__(self) -> None:
        self.hint: Callable[[str], None] | None = None
        self.checked: CheckOutcome | None = None

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        if self.hint is not None:
            self.hint("connection pool cleared")

    def started(self, event: monitoring.ServerHeartbeatStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.ServerHeartbeatSucceededEvent) -> None:
        if self.checked is not None:
            self.checked(True, "", proves_down=False)

    def failed(self, event: monitoring.ServerHeartbeatFailedEvent) -> None:
        if self.checked is not None:
            # a refused or lost connection is evidence; a heartbeat that timed out or was
            # cancelled is a hint (a busy host causes both)
            reason = f"heartbeat: {type(event.reply).__name__}"
            self.checked(False, reason, proves_down=heartbeat_proves_unreachable(event.reply))

    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None:
        pass

    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None:
        pass

    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None:
        pass

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        pass

    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None:
        pass

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        pass

    def connection_check_out_started(
        self, event: monitoring.ConnectionCheckOutStartedEvent
    ) -> None:
        pass

    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None:
        pass

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:
        pass

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:
        pass


class MongoStore:
    """One client, one database; owns index creation and scoped collection hand-out.

    The client can be replaced while serving (`switch`, when the credentials
    file changes): stores take their collections from here at each call, never
    keep one, so every call that starts after the switch uses the new client,
    and a call in flight finishes on the old one, which the caller closes after
    a grace period."""

    def __init__(self, *, uri: str, database: str, timeout_ms: int = 5_000) -> None:
        self._signals = _DriverSignals()
        self._database_name = database
        self._timeout_ms = timeout_ms
        self._use(self._connect(uri))

    def _connect(self, uri: str) -> AsyncMongoClient[Document]:
        timeout_ms = self._timeout_ms
        return AsyncMongoClient(
            uri,
            tz_aware=True,
            # datetimes come back in datetime.UTC (C code), not bson's Python tzinfo, whose
            # utcoffset() is a Python call in every comparison and subtraction of a stored
            # time (the timestamps of a response among them: about half their cost)
            tzinfo=UTC,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms * 2,
            appname="meshgate",
            event_listeners=[MongoCommandSpans(), self._signals],
            **client_options(uri),
        )

    def _use(self, client: AsyncMongoClient[Document]) -> None:
        self._client = client
        self._db: AsyncDatabase[Document] = client[self._database_name]
        self.organizations: AsyncCollection[Document] = self._db["organizations"]
        self.keys: AsyncCollection[Document] = self._db["keys"]
        self.namespaces: AsyncCollection[Document] = self._db["namespaces"]
        # pointers to due work across namespaces (storage/backends/work_queue.py); never tenant data
        self.work_queue: AsyncCollection[Document] = self._db["work_queue"]

    async def switch(self, uri: str) -> AsyncMongoClient[Document]:
        """Connects with `uri` (it must answer a ping, else nothing changes) and makes it the
        client of every call from now on; returns the previous client, for the caller to
        close once the calls in flight on it are done."""
        client = self._connect(uri)
        try:
            await client.admin.command("ping")
        except BaseException:
            await client.close()
            raise
        previous = self._client
        self._use(client)
        return previous

    async def ensure_indexes(self) -> None:
        await self.organizations.create_index([("organization_id", ASCENDING)], unique=True)
        await self.keys.create_index([("secrets.digest", ASCENDING)], unique=True, sparse=True)
        await self.keys.create_index([("organization_id", ASCENDING), ("_id", ASCENDING)])
        await self.namespaces.create_index(
            [("internal_id", ASCENDING), ("name", ASCENDING)], unique=True
        )
        await self.namespaces.create_index(
            [("internal_id", ASCENDING), ("environment", ASCENDING), ("_id", ASCENDING)]
        )
        await self.namespaces.create_index([("state", ASCENDING)])
        # namespaced data: every compound index starts with namespace_id, then internal_id.
        # A scoped filter always names both (ScopedCollection), and a namespace belongs to one
        # organization, so (namespace_id, internal_id, x) is as unique as (namespace_id, x) and
        # matches the filter's fields exactly: the embedded engine's planner uses an index only
        # for such filters (docs/embedded-mongodb.md), MongoDB uses it either way.
        scope = [("namespace_id", ASCENDING), ("internal_id", ASCENDING)]

        def scoped(*fields: str) -> list[tuple[str, int]]:
            return [*scope, *((f, ASCENDING) for f in fields)]

        await self._db["documents"].create_index(scoped("document_id"), unique=True)
        # UpdateDocument's and ingestion's compare-and-set filter (document_id, revision)
        await self._db["documents"].create_index(scoped("document_id", "revision"))
        await self._db["vector_stores"].create_index([("namespace_id", ASCENDING)], unique=True)
        await self._db["restores"].create_index(scope, unique=True)
        for name, field in (
            ("tasks", "task_id"),
            ("webhooks", "webhook_id"),
            ("events", "event_id"),
            ("deliveries", "delivery_id"),
        ):
            await self._db[name].create_index(scoped(field), unique=True)
        # a task's state transitions: task_id with state, and lease_token once claimed
        await self._db["tasks"].create_index(scoped("task_id", "state", "lease_token"))
        # ListTasks by state, newest first
        await self._db["tasks"].create_index(scoped("state", "task_id"))
        # a delivery's status transitions
        await self._db["deliveries"].create_index(scoped("delivery_id", "status"))
        # ListDeliveries of one webhook, newest first; a webhook's deletion
        await self._db["deliveries"].create_index(scoped("webhook_id", "delivery_id"))
        await self.work_queue.create_index([("kind", ASCENDING), ("due_at", ASCENDING)])
        await self.work_queue.create_index([("namespace_id", ASCENDING)])

    @property
    def database(self) -> AsyncDatabase[Document]:
        """For organization-level collections owned by one storage module (usage, credits)."""
        return self._db

    def scoped(self, name: str, scope: Scope) -> ScopedCollection:
        """A namespaced data collection; there is no unscoped variant."""
        return ScopedCollection(self._db[name], scope)

    async def ping(self) -> None:
        await self._client.admin.command("ping")

    def on_driver_signals(
        self,
        *,
        hint: Callable[[str], None],
        checked: CheckOutcome,
    ) -> None:
        """From the event loop, as the driver learns it: `hint(reason)` when it clears its
        connection pool (MongoDB may be unreachable, or a heartbeat ran late), and
        `checked(up, reason, proves_down=…)` with each heartbeat's outcome
        (storage/backends/breaker.py weighs them)."""
        self._signals.hint = hint
        self._signals.checked = checked

    async def close(self) -> None:
        await self._client.close()
