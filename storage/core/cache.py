"""A small bounded TTL cache for per-process lookups (keys, organizations, namespaces)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["TTLCache"]


class TTLCache[K: Hashable, V]:
    """Entries expire after `ttl_s` (or an earlier per-entry deadline); oldest evicted first.

    `generation` moves on every removal (`pop`, `pop_where`, `clear`), whether or not
    an entry was there. A caller that reads the store and then caches what it read
    takes the generation before the read and passes it to `put(if_generation=...)`:
    when an invalidation arrived meanwhile (for this entry or any other), the put is
    skipped, so a read that started before a revocation cannot cache its stale
    answer after the revocation was processed.
    """

    def __init__(
        self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.generation = 0

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        deadline, value = entry
        if self._clock() >= deadline:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(
        self, key: K, value: V, *, ttl_s: float | None = None, if_generation: int | None = None
    ) -> None:
        """Cache `value`, unless an invalidation happened since `if_generation` was read."""
        if if_generation is not None and if_generation != self.generation:
            return
        ttl = self._ttl_s if ttl_s is None else min(ttl_s, self._ttl_s)
        if ttl <= 0:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def pop_where(self, predicate: Callable[[V], bool]) -> int:
        self.generation += 1
        doomed = [k for k, (_, v) in self._entries.items() if predicate(v)]
        for k in doomed:
            del self._entries[k]
        return len(doomed)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
