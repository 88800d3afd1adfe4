"""Any file the check pass of a restore accepts is written completely (issue 21, item 6).

The review found a file whose check passed and whose write failed half-way (an integer
BSON cannot hold), leaving the namespace claimed by a file it could never take. Here
hypothesis writes small files of random JSON-ish items, edge numbers and text included,
and both passes run against the real stores: either the file is refused with nothing
written, or every item of it is in the stores; nothing else (no INTERNAL) may happen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from server.app import RunningServer
from server.backends import Backends
from storage.backends.scoped import Scope
from storage.core.errors import InvalidArgumentError
from storage.data.documents import DocumentStore
from storage.data.vectors import VectorStore
from storage.webhooks.store import WebhookStore
from tests.support.backups import file_of_lines
from tests.support.tenants import random_scope


def mostly(common: st.SearchStrategy[Any], edges: list[Any]) -> st.SearchStrategy[Any]:
    """`common` about 19 times in 20, else one of `edges`: a file of a few items with a
    dozen values is refused about as often as it passes (shrinking goes to `common`)."""
    return st.integers(0, 19).flatmap(lambda n: st.sampled_from(edges) if n == 19 else common)


# numbers at the edges of what JSON spells, Python reads and BSON and Qdrant store
NUMBERS = mostly(
    st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False),
    [2**63, -(2**63) - 1, 2**64, 2**63 - 1, -(2**63), float("nan"), float("inf"), -0.0],
)
TEXT = mostly(st.text(alphabet="abcé \n\x01", max_size=6), ["\ud800", "a\x00b", "x" * 1025])
KEYS = mostly(
    st.sampled_from(["a", "b", "c-d", "e_f"]),
    ["$x", "a.b", "", "k\x00", "\udfff", "internal_id", "point_id", "bad key"],
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=4,
)
METADATA = st.dictionaries(KEYS, st.one_of(SCALARS, st.lists(SCALARS, max_size=3)), max_size=3)
TIMES = mostly(
    st.just("2026-01-01T00:00:00+00:00"),
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "2026-01-01T00:00:00",  # no time zone
        "yesterday",
    ],
)
DOCUMENTS = st.fixed_dictionaries(
    {
        "kind": st.just("document"),
        "document_id": mostly(st.sampled_from(["d1", "d2", "d3"]), ["bad id!", ""]),
        "body": mostly(st.dictionaries(KEYS, VALUES, max_size=3), [[], "text", None]),
        "metadata": METADATA,
        "created_at": TIMES,
        "updated_at": TIMES,
        "revision": mostly(st.integers(1, 10), [0, 2**63, 2**64, 1.5, True]),
    }
)
VECTOR_STORES = st.fixed_dictionaries(
    {
        "kind": st.just("vector_store"),
        "dimension": mostly(st.just(3), [0, 4097, 2**64]),
        "distance": mostly(st.sampled_from(["cosine", "dot", "euclid"]), ["bogus"]),
    }
)
POINTS = st.fixed_dictionaries(
    {
        "kind": st.just("point"),
        "point_id": mostly(st.sampled_from(["p1", "p2"]), ["bad id!"]),
        "vector": mostly(st.lists(NUMBERS, min_size=3, max_size=3), [[1, 2], [], [1, 2, 3, 4]]),
        "payload": METADATA,
    }
)
WEBHOOKS = st.fixed_dictionaries(
    {
        "kind": st.just("webhook"),
        "webhook_id": mostly(
            st.sampled_from(["wh_00000000000000000001", "wh_00000000000000000002"]), ["wh_1"]
        ),
        "url": mostly(st.just("http://127.0.0.1:9/hook"), ["https://[::1", "http://10.0.0.1/"]),
        "event_types": mostly(st.sampled_from([["task.completed"], ["*"]]), [[], ["nope"]]),
        "enabled": st.booleans(),
        "description": TEXT,
        "disabled_reason": TEXT,
        "created_at": TIMES,
    }
)
# in the order an export writes them, with now and then a point before any vector store
FILES = st.builds(
    lambda hooks, docs, store, points: [*hooks, *docs, *store, *points],
    st.lists(WEBHOOKS, max_size=1),
    st.lists(DOCUMENTS, max_size=2),
    mostly(st.lists(VECTOR_STORES, min_size=1, max_size=1), [[]]),
    st.lists(POINTS, max_size=2),
)


def line(item: dict[str, Any]) -> bytes:
    # ensure_ascii: a lone surrogate is spelled as an escape, as any JSON writer may
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Stored:
    def __init__(self, backends: Backends, server: RunningServer) -> None:
        self.documents = DocumentStore(mongo=backends.mongo)
        self.vectors: VectorStore = server.components.vectors
        self.webhooks: WebhookStore = server.components.webhooks
        self.mongo = backends.mongo

    async def contents(self, scope: Scope) -> tuple[set[str], int, set[str], bool]:
        """Document ids, points, webhook ids, and whether a restore marker is there."""
        docs = await self.mongo.scoped(DocumentStore.COLLECTION, scope).find({})
        config = await self.mongo.scoped(VectorStore.CONFIGS, scope).find_one({})
        points = await self.vectors.count(scope) if config is not None else 0
        hooks = {w.webhook_id for w in await self.webhooks.all(scope)}
        marker = await self.mongo.scoped("restores", scope).find_one({})
        return {d["document_id"] for d in docs}, points, hooks, marker is not None


# pymongo takes each wire message's request id from the global `random`, beside hypothesis
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_a_file_the_check_accepts_is_written_whole(
    backends: Backends, server: RunningServer
) -> None:
    loop = asyncio.get_running_loop()
    backups = server.components.backups
    stored = Stored(backends, server)
    outcomes = {"refused": 0, "written": 0}

    def run[T](call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, loop).result(timeout=60)

    @seed(21)
    @settings(
        max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(items=FILES)
    def written_whole_or_not_at_all(items: list[dict[str, Any]]) -> None:
        scope = random_scope()
        data = file_of_lines(line(item) for item in items)
        try:
            result = run(backups.restore(scope, chunks_of(data)))
        except InvalidArgumentError:
            outcomes["refused"] += 1
            assert run(stored.contents(scope)) == (set(), 0, set(), False)
            return
        outcomes["written"] += 1
        kinds = [i["kind"] for i in items]
        documents, points, webhooks, _ = run(stored.contents(scope))
        assert documents == {i["document_id"] for i in items if i["kind"] == "document"}
        assert points == len({i["point_id"] for i in items if i["kind"] == "point"})
        assert webhooks == {i["webhook_id"] for i in items if i["kind"] == "webhook"}
        assert result.restored.documents == kinds.count("document")
        assert result.restored.points == kinds.count("point")

    await asyncio.to_thread(written_whole_or_not_at_all)
    # both outcomes were explored, not one of them only
    assert outcomes["refused"] >= 10 and outcomes["written"] >= 10, outcomes
