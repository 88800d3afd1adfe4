"""Controlled interleavings: a store read that completes for real, then waits for the test.

`HeldCollection` stands in front of a real PyMongo collection (MongoDB behind it is
real). `hold("find_one")` arms the next call of that method: the command runs and
its result comes back from MongoDB, then the caller waits until the test calls
`release()`. In between, the test runs whatever must happen "during" the read (a
revocation, a concurrent rotation, a namespace deletion), so a race is reproduced
on purpose, every time, instead of hoped for.

A store gets the held collection through a `MongoStore` of its own whose public
collection attribute is replaced (`held_mongo`); the store's code is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from pymongo.asynchronous.collection import AsyncCollection

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope, ScopedCollection

__all__ = ["HeldCollection", "HeldScopedMongo", "Hold", "held_mongo"]

Document = dict[str, Any]


class Hold:
    """One armed call: `arrived` is set once its result is in hand, `release()` lets it go."""

    def __init__(self) -> None:
        self._arrived = asyncio.Event()
        self._released = asyncio.Event()
        self.result: Any = None

    async def arrived(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._arrived.wait(), timeout_s)

    def release(self) -> None:
        self._released.set()

    async def deliver(self, result: Any) -> Any:
        """The armed call's side: announce the result, wait for the release, return it."""
        self.result = result
        self._arrived.set()
        await self._released.wait()
        return result


class HeldCollection:
    """A real collection whose armed method calls wait for the test after they return."""

    def __init__(self, inner: AsyncCollection[Document]) -> None:
        self._inner = inner
        self._armed: dict[str, list[Hold]] = {}

    def hold(self, method: str) -> Hold:
        hold = Hold()
        self._armed.setdefault(method, []).append(hold)
        return hold

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in self._armed:
            return attribute
        method = cast(Callable[..., Awaitable[Any]], attribute)

        async def held(*args: Any, **kwargs: Any) -> Any:
            result = await method(*args, **kwargs)
            armed = self._armed.get(name)
            if armed:
                hold = armed.pop(0)
                if not armed:
                    del self._armed[name]
                return await hold.deliver(result)
            return result

        return held

    def as_collection(self) -> AsyncCollection[Document]:
        return cast(AsyncCollection[Document], self)


def held_mongo(
    uri: str, database: str, *names: str
) -> tuple[MongoStore, dict[str, HeldCollection]]:
    """A MongoStore of its own (its own client) on `database` whose named collection
    attributes (`keys`, `namespaces`) are held; the dict maps each name to its wrapper."""
    store = MongoStore(uri=uri, database=database)
    held: dict[str, HeldCollection] = {}
    for name in names:
        wrapper = HeldCollection(getattr(store, name))
        setattr(store, name, wrapper.as_collection())
        held[name] = wrapper
    return store, held


class HeldScopedMongo(MongoStore):
    """A MongoStore of its own whose scoped collections of one name are held: a namespaced
    store built on it (documents, webhooks...) can be paused after a real write."""

    def __init__(self, *, uri: str, database: str, name: str) -> None:
        super().__init__(uri=uri, database=database)
        self.held = HeldCollection(self.database[name])
        self._held_name = name

    def scoped(self, name: str, scope: Scope) -> ScopedCollection:
        if name == self._held_name:
            return ScopedCollection(self.held.as_collection(), scope)
        return super().scoped(name, scope)
