"""The per-process caches (keys, organizations, namespaces, vector store configurations)
are TTLCaches: whatever a caller makes them hold, they keep at most their bound."""

from __future__ import annotations

from storage.core.cache import TTLCache


def test_a_cache_keeps_at_most_its_bound_and_forgets_the_oldest_first() -> None:
    now = [0.0]
    cache: TTLCache[str, int] = TTLCache(ttl_s=10.0, max_entries=100, clock=lambda: now[0])
    for i in range(10_000):
        cache.put(f"k{i}", i)
    assert len(cache) == 100
    assert cache.get("k9899") is None and cache.get("k9900") == 9900
    cache.put("k9900", 0)  # a put renews the entry's place
    cache.put("new", 1)
    assert cache.get("k9900") == 0 and cache.get("k9901") is None
    now[0] = 10.0
    assert cache.get("new") is None  # and nothing outlives its time to live
