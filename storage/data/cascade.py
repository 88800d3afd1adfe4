"""Namespace deletion: the namespace stops resolving first, then its data goes.

1. `mark_deleting` flips the namespace's state: from that moment no call can
   resolve it (the invalidation bus drops it from every replica's cache).
2. `purge` drops the namespace's pending background work (tasks, webhook
   deliveries), empties every namespaced MongoDB collection, drops the Qdrant
   collection and deletes the Redis keys. Each step is idempotent.
3. The namespace document is removed last.

A crash anywhere leaves the namespace in state `deleting`; `finish_pending`
(run at start-up and periodically) re-runs the purge for those, so a
deletion always completes.
"""

from __future__ import annotations

import logging

from storage.backends.mongo import NAMESPACED_COLLECTIONS, MongoStore
from storage.backends.redis_client import RedisClient
from storage.backends.redis_keys import purge_namespace_keys
from storage.backends.scoped import Scope
from storage.backends.work_queue import WorkQueue
from storage.data.vectors import VectorStore
from storage.tenancy.namespaces import NamespaceStore

__all__ = ["NamespacePurger"]

_LOG = logging.getLogger("meshgate.cascade")


class NamespacePurger:
    def __init__(
        self,
        *,
        mongo: MongoStore,
        redis: RedisClient,
        vectors: VectorStore,
        namespaces: NamespaceStore,
    ) -> None:
        self._mongo = mongo
        self._redis = redis
        self._vectors = vectors
        self._namespaces = namespaces

    async def purge(self, scope: Scope) -> None:
        # pending work first, so no worker picks up the namespace's tasks or deliveries again
        await WorkQueue(mongo=self._mongo).purge_namespace(scope.namespace_id)
        for name in NAMESPACED_COLLECTIONS:
            await self._mongo.scoped(name, scope).delete_many()
        await self._vectors.drop(scope.namespace_id)
        await purge_namespace_keys(self._redis, scope.namespace_id)

    async def finish(self, scope: Scope) -> None:
        """Steps 2 and 3 for a namespace already marked deleting; safe to repeat."""
        await self.purge(scope)
        await self._namespaces.remove(
            internal_id=scope.internal_id, namespace_id=scope.namespace_id
        )

    async def finish_pending(self) -> int:
        """Complete deletions a crash interrupted; returns how many were finished."""
        finished = 0
        for scope in await self._namespaces.deleting():
            await self.finish(scope)
            finished += 1
            _LOG.info("finished interrupted deletion of namespace %s", scope.namespace_id)
        return finished
