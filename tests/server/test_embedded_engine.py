"""The embedded MongoDB engine: large namespaces stay index-served; MongoDB's semantics hold.

These run against the session's engine (the embedded one, or a real MongoDB
when MESHGATE_TEST_MONGODB_URI is set) through PyMongo, as the server does.
No time is asserted: speed is `make bench`'s load figure. What is asserted is
the engine's work as its query plans report it: with a few thousand documents
in one namespace, each filter of the document hot path is an index scan over
an index holding every field of the filter, so the documents it reads are the
ones it returns, whatever the namespace's size (docs/embedded-mongodb.md).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.backends import Backends
from server.embedded import EmbeddedEngineMissingError, EmbeddedMongo, embedded_redis
from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.core.errors import AlreadyExistsError
from storage.core.ids import random_base62
from storage.data.documents import DocumentStore
from tests.support.cli import ROOT, run_cli

MESHGATE = Path(sys.executable).with_name("meshgate")  # the installed command

DOCUMENTS = 3_000
BATCH = 100
# MongoDB's planner may pick another of the indexes holding the selective fields; the
# embedded engine must find one holding every field of the filter, or it scans the namespace
EMBEDDED = not os.environ.get("MESHGATE_TEST_MONGODB_URI")


def _stages(plan: Any) -> Iterator[Mapping[str, Any]]:
    """Every plan stage, however the server nests them (inputStage(s), queryPlan, ...)."""
    if isinstance(plan, Mapping):
        if "stage" in plan:
            yield plan
        for value in plan.values():
            yield from _stages(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _stages(item)


def _index_scan(explained: Mapping[str, Any]) -> dict[str, Any]:
    winning = explained["queryPlanner"]["winningPlan"]
    stages = list(_stages(winning))
    assert not any(s["stage"] == "COLLSCAN" for s in stages), winning
    scans = [s for s in stages if s["stage"] == "IXSCAN"]
    assert len(scans) == 1, winning
    return dict(scans[0]["keyPattern"])


@dataclass(frozen=True)
class LargeNamespace:
    scope: Scope
    store: DocumentStore
    mongo: MongoStore


@pytest.fixture(scope="module")
async def large_namespace(mongo_uri: str, database_name: str) -> AsyncIterator[LargeNamespace]:
    """In a database of its own: the session's is shared, and on the embedded engine every
    filtered list of a later test would read these documents too."""
    mongo = MongoStore(uri=mongo_uri, database=f"{database_name}_large")
    await mongo.ensure_indexes()
    scope = Scope(internal_id=str(uuid.uuid4()), namespace_id="ns_" + random_base62(20))
    store = DocumentStore(mongo=mongo)
    for first in range(0, DOCUMENTS, BATCH):
        await store.create_many(
            scope,
            [(f"doc-{i:05d}", {"n": i}, {"even": i % 2 == 0}) for i in range(first, first + BATCH)],
        )
    yield LargeNamespace(scope, store, mongo)
    if not EMBEDDED:  # the embedded engine's data goes with the session (as in conftest)
        await mongo.database.client.drop_database(f"{database_name}_large")
    await mongo.close()


def _assert_index_served(
    explained: Mapping[str, Any], scoped: dict[str, Any], *selective: str
) -> None:
    key = _index_scan(explained)
    needed = set(scoped) if EMBEDDED else {"namespace_id", "internal_id", *selective}
    assert needed <= set(key), f"{key} leaves part of {scoped} to a scan"


def _scoped(scope: Scope, query: dict[str, Any]) -> dict[str, Any]:
    return {"namespace_id": scope.namespace_id, "internal_id": scope.internal_id, **query}


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"document_id": "doc-01234"}, id="GetDocument, DeleteDocument, ingest"),
        pytest.param({"document_id": {"$in": ["doc-00007", "x"]}}, id="batch duplicate check"),
        pytest.param({"document_id": "doc-01234", "revision": 1}, id="compare-and-set"),
    ],
)
async def test_hot_document_filters_are_index_scans_in_a_large_namespace(
    large_namespace: LargeNamespace, query: dict[str, Any]
) -> None:
    scope = large_namespace.scope
    scoped = _scoped(scope, query)
    documents = large_namespace.mongo.database["documents"]
    _assert_index_served(await documents.find(scoped).explain(), scoped, "document_id")
    assert await documents.count_documents(scoped) == 1


@pytest.mark.parametrize(
    ("collection", "query", "selective"),
    [
        ("tasks", {"task_id": "t"}, "task_id"),
        ("tasks", {"task_id": "t", "state": "pending"}, "task_id"),
        ("tasks", {"task_id": "t", "state": {"$in": ["pending", "in_progress"]}}, "task_id"),
        ("tasks", {"task_id": "t", "lease_token": "l", "state": "in_progress"}, "task_id"),
        ("tasks", {"state": {"$in": ["pending"]}}, "state"),
        ("webhooks", {"webhook_id": "w"}, "webhook_id"),
        ("events", {"event_id": "e"}, "event_id"),
        ("deliveries", {"delivery_id": "d"}, "delivery_id"),
        ("deliveries", {"delivery_id": "d", "status": "pending"}, "delivery_id"),
        ("deliveries", {"webhook_id": "w"}, "webhook_id"),
        ("deliveries", {"webhook_id": "w", "delivery_id": {"$lt": "d"}}, "webhook_id"),
    ],
)
async def test_namespaced_filters_by_id_are_index_scans(
    backends: Backends, collection: str, query: dict[str, Any], selective: str
) -> None:
    scope = Scope(internal_id=str(uuid.uuid4()), namespace_id="ns_" + random_base62(20))
    scoped = _scoped(scope, query)
    explained = await backends.mongo.database[collection].find(scoped).explain()
    _assert_index_served(explained, scoped, selective)


async def test_a_large_namespace_still_refuses_duplicates_and_takes_new_documents(
    large_namespace: LargeNamespace,
) -> None:
    scope, store = large_namespace.scope, large_namespace.store
    assert await store.count(scope) == DOCUMENTS
    with pytest.raises(AlreadyExistsError):
        await store.create(scope, document_id="doc-02999", body={}, metadata={})
    with pytest.raises(AlreadyExistsError):
        await store.create_many(scope, [("fresh-1", {}, {}), ("doc-00000", {}, {})])
    created = await store.create(scope, document_id="fresh-1", body={"n": -1}, metadata={})
    assert (await store.get(scope, "fresh-1")).body == created.body == {"n": -1}
    assert (await store.get(scope, "doc-01500")).body == {"n": 1500}


async def test_booleans_and_numbers_match_as_in_mongodb(backends: Backends) -> None:
    """{flag: 1} must not match true (nx-27017 does); 1 and 1.0 are the same number."""
    collection = backends.mongo.database[f"semantics_{random_base62(8)}"]
    await collection.insert_many(
        [
            {"k": "true", "flag": True},
            {"k": "one", "flag": 1},
            {"k": "one-float", "flag": 1.0},
            {"k": "null", "flag": None},
            {"k": "missing"},
        ]
    )

    async def keys(query: dict[str, Any]) -> list[str]:
        return sorted([doc["k"] async for doc in collection.find(query)])

    try:
        assert await keys({"flag": 1}) == ["one", "one-float"]
        assert await keys({"flag": True}) == ["true"]
        assert await keys({"flag": {"$in": [1]}}) == ["one", "one-float"]
        assert await keys({"flag": {"$gt": 0}}) == ["one", "one-float"]
        assert await keys({"flag": None}) == ["missing", "null"]
        assert await keys({"flag": {"$ne": 1}}) == ["missing", "null", "true"]
    finally:
        await collection.drop()


def test_a_missing_engine_names_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "secantus", None)  # as if the extra were not installed
    with pytest.raises(EmbeddedEngineMissingError, match="MESHGATE_MONGODB_URI") as raised:
        EmbeddedMongo(data_dir=None).start()
    assert "embedded" in str(raised.value)
    monkeypatch.setitem(sys.modules, "fakeredis", None)
    with pytest.raises(EmbeddedEngineMissingError, match="MESHGATE_REDIS_URL") as raised:
        embedded_redis()
    assert "embedded" in str(raised.value)


@pytest.mark.parametrize(
    ("shadowed", "store"), [(("secantus", "fakeredis"), "Redis"), (("secantus",), "MongoDB")]
)
def test_dev_without_the_extra_says_what_to_install(
    tmp_path: Path, shadowed: tuple[str, ...], store: str
) -> None:
    """`serve --dev` on a production install (no `embedded` extra): a clear error naming the
    setting and the extra, exit code 2, before anything is served. Without Redis's engine
    it stops before MongoDB's is started; without MongoDB's, the engine's own process
    reports it (the server never imports it)."""
    hidden = tmp_path / "no-extra"
    for module in shadowed:  # shadow the installed engines
        (hidden / module).mkdir(parents=True)
        (hidden / module / "__init__.py").write_text(
            f"raise ImportError('{module} is not installed')\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    env.update(
        PYTHONPATH=os.pathsep.join((str(hidden), str(ROOT), str(ROOT / "gen"))),
        MESHGATE_DATA_DIR=str(tmp_path / "data"),
        MESHGATE_METRICS_LISTEN="off",
    )
    started = run_cli(
        "serve",
        "--dev",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        env=env,
        cwd=tmp_path,
        timeout_s=120,
    )
    assert started.returncode == 2, started.stderr
    assert f"error: the embedded {store} engine is not installed" in started.stderr
    setting = "MESHGATE_REDIS_URL" if store == "Redis" else "MESHGATE_MONGODB_URI"
    assert setting in started.stderr and "`embedded` extra" in started.stderr
    assert "Traceback" not in started.stderr
