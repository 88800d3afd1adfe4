"""What Qdrant's own conditions mean, the ground `storage/data/qdrant_filters.py` builds on.

Qdrant's null and emptiness conditions differ from MongoDB's equality with null; the
compilation relies on exactly these meanings (and on payload lists never being empty
or holding null), so they are pinned here against qdrant-client itself (local mode, or
the Qdrant named by MESHGATE_TEST_QDRANT_URL).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from qdrant_client import AsyncQdrantClient, models

from storage.core.filters import parse_filter
from storage.data.qdrant_filters import to_qdrant

PAYLOADS: dict[str, dict[str, Any]] = {
    "missing": {},
    "null": {"f": None},
    "empty": {"f": []},  # refused by check_metadata; here to show why
    "text": {"f": "x"},
    "one": {"f": 1},
    "true": {"f": True},
    "list": {"f": ["x", 2]},
}


@pytest.fixture
async def points() -> AsyncIterator[tuple[AsyncQdrantClient, str]]:
    url = os.environ.get("MESHGATE_TEST_QDRANT_URL")
    client = AsyncQdrantClient(url=url) if url else AsyncQdrantClient(location=":memory:")
    name = f"semantics_{secrets.token_hex(4)}"
    await client.create_collection(
        name, vectors_config=models.VectorParams(size=1, distance=models.Distance.EUCLID)
    )
    await client.upsert(
        name,
        points=[
            models.PointStruct(id=i, vector=[0.0], payload={"name": key, **payload})
            for i, (key, payload) in enumerate(PAYLOADS.items())
        ],
        wait=True,
    )
    try:
        yield client, name
    finally:
        await client.delete_collection(name)
        await client.close()


async def matching(points: tuple[AsyncQdrantClient, str], *conditions: Any) -> set[str]:
    client, name = points
    found, _ = await client.scroll(
        name, scroll_filter=models.Filter(must=list(conditions)), limit=100, with_payload=True
    )
    return {str((p.payload or {})["name"]) for p in found}


def field(key: str = "f") -> models.PayloadField:
    return models.PayloadField(key=key)


async def test_is_null_is_null_only_and_is_empty_includes_missing_and_empty_lists(
    points: tuple[AsyncQdrantClient, str],
) -> None:
    assert await matching(points, models.IsNullCondition(is_null=field())) == {"null"}
    assert await matching(points, models.IsEmptyCondition(is_empty=field())) == {
        "missing",
        "null",
        "empty",
    }
    # so "not null" matches a missing field, where MongoDB's $ne: null does not
    not_null = models.Filter(must_not=[models.IsNullCondition(is_null=field())])
    assert "missing" in await matching(points, not_null)


async def test_match_is_typed_and_ranges_read_numbers_only(
    points: tuple[AsyncQdrantClient, str],
) -> None:
    def match(value: Any) -> models.FieldCondition:
        return models.FieldCondition(key="f", match=models.MatchValue(value=value))

    assert await matching(points, match(True)) == {"true"}
    assert await matching(points, match("x")) == {"text", "list"}  # a list holding it
    one = models.FieldCondition(key="f", range=models.Range(gte=1.0, lte=1.0))
    assert await matching(points, one) == {"one"}  # not true
    two = models.FieldCondition(key="f", range=models.Range(gte=2.0, lte=2.0))
    assert await matching(points, two) == {"list"}


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"f": None}, {"missing", "null"}),
        ({"f": {"$ne": None}}, {"text", "one", "true", "list"}),
        ({"f": {"$exists": False}}, {"missing"}),
        ({"f": {"$nin": ["x"]}}, {"missing", "null", "one", "true"}),
    ],
)
async def test_the_compilation_means_mongodb_for_admitted_payloads(
    points: tuple[AsyncQdrantClient, str], filter: dict[str, Any], expected: set[str]
) -> None:
    """Over payloads check_metadata admits (all but `empty`), MongoDB's answers."""
    found = await matching(points, *to_qdrant(parse_filter(filter)))
    assert found - {"empty"} == expected
