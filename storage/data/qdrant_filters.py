"""The filter tree (`storage/core/filters.py`) compiled to a Qdrant filter over point payloads,
with MongoDB's meaning.

Qdrant's conditions mean something else at the edges, so each operator is built from
the ones whose meaning is plain for the values a payload may hold (scalars, null, and
lists of 1-100 non-null scalars; `check_metadata` refuses the rest):

- `IsEmpty(f)` matches a missing field or null (it would match `[]` too, which no
  payload holds), which is exactly MongoDB's `f == null`;
- `IsNull(f)` matches null only, so "missing" is `IsEmpty and not IsNull`;
- `MatchValue` compares strings and booleans by type (`true` never matches `1`) and
  matches a list that holds the value, as MongoDB does;
- numbers are compared with `Range`, which reads integers and floats alike (`1` equals
  `1.0`), never booleans or strings, and also matches a list holding such a number;
- `$ne`, `$nin` and `$exists: true` are `must_not` of their opposite, so they match
  missing fields where MongoDB does.

tests/test_filter_semantics.py checks, through the real server, that documents and
points answer every filter alike.
"""

from __future__ import annotations

from qdrant_client import models

from storage.core.filters import Condition, Group, Scalar

__all__ = ["to_qdrant"]


def _null_or_missing(field: str) -> models.Condition:
    return models.IsEmptyCondition(is_empty=models.PayloadField(key=field))


def _missing(field: str) -> models.Condition:
    null = models.IsNullCondition(is_null=models.PayloadField(key=field))
    return models.Filter(must=[_null_or_missing(field)], must_not=[null])


def _equals(field: str, value: Scalar) -> models.Condition:
    """MongoDB's `{field: value}`."""
    if value is None:
        return _null_or_missing(field)
    if isinstance(value, float):  # every number (the parser makes them floats)
        return models.FieldCondition(key=field, range=models.Range(gte=value, lte=value))
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))


def _any_of(field: str, values: tuple[Scalar, ...]) -> models.Condition:
    return models.Filter(should=[_equals(field, v) for v in values])


def _qdrant_condition(c: Condition) -> models.Condition:
    if c.op == "$eq":
        return _equals(c.field, c.value)
    if c.op == "$ne":
        return models.Filter(must_not=[_equals(c.field, c.value)])
    if c.op == "$in":
        return _any_of(c.field, c.value)
    if c.op == "$nin":
        return models.Filter(must_not=[_any_of(c.field, c.value)])
    if c.op == "$exists":
        missing = _missing(c.field)
        return models.Filter(must_not=[missing]) if c.value else missing
    bound = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}[c.op]
    return models.FieldCondition(key=c.field, range=models.Range(**{bound: c.value}))


def to_qdrant(tree: Group | None) -> list[models.Condition]:
    """Conditions to AND together (the caller adds the namespace condition)."""
    if tree is None:
        return []

    def walk(node: Condition | Group) -> models.Condition:
        if isinstance(node, Condition):
            return _qdrant_condition(node)
        children = [walk(child) for child in node.children]
        return models.Filter(must=children) if node.op == "$and" else models.Filter(should=children)

    return [walk(tree)]
