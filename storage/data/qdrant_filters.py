"""The filter tree (`storage/core/filters.py`) compiled to a Qdrant filter over point payloads."""

from __future__ import annotations

from qdrant_client import models

from storage.core.filters import Condition, Group, Scalar

__all__ = ["to_qdrant"]


def _equals(field: str, value: Scalar) -> models.Condition:
    if isinstance(value, float):
        return models.FieldCondition(key=field, range=models.Range(gte=value, lte=value))
    if value is None:
        return models.IsNullCondition(is_null=models.PayloadField(key=field))
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
        empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=c.field))
        return models.Filter(must_not=[empty]) if c.value else empty
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
