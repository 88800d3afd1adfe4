"""The filter parser: empty clauses, nesting, and the depth of what it compiles to.

What filters mean on both stores is tested through the real server in
tests/test_filter_semantics.py; here the parser's own limits, and that the scoped
collection's generic guard admits everything the parser admits.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from storage.backends.scoped import check_filter
from storage.core.errors import InvalidArgumentError
from storage.core.filters import MAX_DEPTH, MAX_MONGO_DEPTH, parse_filter, to_mongo


def depth(value: Any, at: int = 0) -> int:
    """The deepest level of `value`, counted as ScopedCollection's guard counts."""
    if isinstance(value, dict):
        return max((depth(v, at + 1) for v in value.values()), default=at)
    if isinstance(value, list):
        return max((depth(v, at + 1) for v in value), default=at)
    return at


def deepest(levels: int) -> dict[str, Any]:
    """A filter `levels` deep where every level holds conditions beside a group, and the
    innermost uses $in: the deepest MongoDB query the compiler makes for that many."""
    clause: dict[str, Any] = {"a": 1, "b": {"$in": [1, 2]}}
    for _ in range(levels - 1):
        clause = {"a": 1, "$or": [clause, {"b": 2}]}
    return clause


@pytest.mark.parametrize(
    "value",
    [
        {"$or": [{}]},
        {"$and": [{"a": 1}, {}]},
        {"$or": [{"$and": [{}]}]},
        {"$and": []},
        {"$or": []},
        {"a": {}},
        {"a": {"$in": []}},
        {"$and": [{"$or": [{"a": {}}]}]},
    ],
)
def test_empty_clauses_are_refused(value: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^filter: "):
        parse_filter(value)


def test_no_filter_is_no_filter() -> None:
    assert parse_filter({}) is None and parse_filter(None) is None
    assert to_mongo(None) == {}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(number: float) -> None:
    for value in ({"a": number}, {"a": {"$lt": number}}, {"a": {"$nin": [number]}}):
        with pytest.raises(InvalidArgumentError, match="finite"):
            parse_filter(value)


def test_the_deepest_admitted_filter_fits_the_scoped_guard_with_a_cursor() -> None:
    compiled = to_mongo(parse_filter(deepest(MAX_DEPTH)))
    assert depth(compiled) == MAX_MONGO_DEPTH
    # what DocumentStore.list_page sends with a page cursor
    check_filter({"$and": [compiled, {"document_id": {"$gt": "a"}}]})
    with pytest.raises(InvalidArgumentError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_filter(deepest(MAX_DEPTH + 1))


def test_a_single_group_is_not_wrapped() -> None:
    """`{"$or": [...]}` compiles to that `$or`, not to an `$and` around it."""
    assert to_mongo(parse_filter({"$or": [{"a": 1}, {"b": 2}]})) == {
        "$or": [{"metadata.a": 1.0}, {"metadata.b": 2.0}]
    }
    assert to_mongo(parse_filter({"a": 1})) == {"metadata.a": 1.0}
