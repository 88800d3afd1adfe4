"""The metadata filter language, shared by document listing and vector search.

A small JSON language over flat metadata (document metadata, point payloads):

    {"color": "red"}                          equality (strings, numbers, booleans, null)
    {"size": {"$gte": 3, "$lt": 10}}          $eq $ne $gt $gte $lt $lte
    {"tag": {"$in": ["a", "b"]}}              $in $nin (at most 100 values)
    {"owner": {"$exists": false}}             $exists
    {"$or": [{...}, {...}], "$and": [...]}    at most 4 levels, 64 conditions

Nothing else parses: no other operator, no field name outside
`[A-Za-z0-9_-]{1,64}`, no reserved field (`namespace_id`, `internal_id`,
`point_id`), no empty clause (`{}`, `[]`), no NaN or infinity. A filter is parsed
once into a tree, then compiled to a MongoDB query (on `metadata.<field>`, here)
or a Qdrant filter (`storage.data.qdrant_filters`), so nothing unvetted reaches
either store.

The meaning is MongoDB's, and the Qdrant compilation reproduces it: a missing
field equals null, a list matches `$eq x` when it holds x, `$ne` and `$nin` match
missing fields, `true` never equals `1`, `1` equals `1.0`, and ranges compare
numbers only. Stored values are what `check_metadata` (storage/data/documents.py)
admits: scalars, null, or lists of 1-100 non-null scalars.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage.core.errors import InvalidArgumentError

__all__ = [
    "FIELD_RE",
    "MAX_DEPTH",
    "MAX_MONGO_DEPTH",
    "RESERVED_FIELDS",
    "Condition",
    "Group",
    "parse_filter",
    "to_mongo",
]

FIELD_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RESERVED_FIELDS = frozenset({"namespace_id", "internal_id", "point_id"})
MAX_DEPTH = 4
# The deepest MongoDB query `to_mongo` builds from a filter the parser admits, counted as
# ScopedCollection's guard counts (the query's root at 0): each level below the first can
# add an `$and` list holding an `$or` list (4), and the innermost level's conditions sit in
# an `$and` list as `{path: {"$in": [value]}}` (5). tests/storage/core/test_filters.py
# builds that deepest filter and measures it.
MAX_MONGO_DEPTH = 4 * (MAX_DEPTH - 1) + 5
MAX_CONDITIONS = 64
MAX_IN = 100
_COMPARISONS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"})
_RANGES = frozenset({"$gt", "$gte", "$lt", "$lte"})

Scalar = str | float | bool | None


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str  # $eq $ne $gt $gte $lt $lte $in $nin $exists
    value: Any


@dataclass(frozen=True, slots=True)
class Group:
    op: str  # $and | $or
    children: tuple[Condition | Group, ...]


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"filter: {message}", field="filter")


def check_field(name: str) -> str:
    if name in RESERVED_FIELDS:
        raise _bad(f"{name!r} is a reserved field")
    if not FIELD_RE.match(name):
        raise _bad(f"field {name[:70]!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def _scalar(value: Any, where: str) -> Scalar:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _bad(f"{where} must be finite")
        return float(value)
    raise _bad(f"{where} must be a string, number, boolean or null")


class _Parser:
    def __init__(self) -> None:
        self.conditions = 0

    def node(self, value: Any, depth: int) -> Group:
        if not isinstance(value, Mapping):
            raise _bad("each clause must be an object")
        if not value:
            raise _bad("an empty clause {} is not a condition; remove it")
        if depth > MAX_DEPTH:
            raise _bad(f"nested deeper than {MAX_DEPTH} levels")
        children: list[Condition | Group] = []
        for key, item in value.items():
            if key in ("$and", "$or"):
                if not isinstance(item, list) or not item:
                    raise _bad(f"{key} needs a non-empty list")
                children.append(Group(key, tuple(self.node(c, depth + 1) for c in item)))
            elif key.startswith("$"):
                raise _bad(f"operator {key[:40]!r} is not allowed here")
            else:
                children.extend(self.field(check_field(key), item))
        if len(children) == 1 and isinstance(children[0], Group):
            return children[0]  # {"$or": [...]} is that group, not an $and around it
        return Group("$and", tuple(children))

    def field(self, name: str, spec: Any) -> list[Condition]:
        if not isinstance(spec, Mapping):
            if isinstance(spec, list):
                raise _bad(f"use {{'$in': [...]}} to match {name!r} against several values")
            return [self.count(Condition(name, "$eq", _scalar(spec, name)))]
        if not spec:
            raise _bad(f"empty operator object for {name!r}")
        out = []
        for op, operand in spec.items():
            if op in _COMPARISONS:
                value = _scalar(operand, f"{name}.{op}")
                if op in _RANGES and not isinstance(value, float):
                    raise _bad(f"{op} on {name!r} needs a number")
                out.append(self.count(Condition(name, op, value)))
            elif op in ("$in", "$nin"):
                if not isinstance(operand, list) or not operand:
                    raise _bad(f"{op} on {name!r} needs a non-empty list")
                if len(operand) > MAX_IN:
                    raise _bad(f"{op} on {name!r} takes at most {MAX_IN} values")
                values = tuple(_scalar(v, f"{name}.{op}") for v in operand)
                out.append(self.count(Condition(name, op, values)))
            elif op == "$exists":
                if not isinstance(operand, bool):
                    raise _bad(f"$exists on {name!r} needs true or false")
                out.append(self.count(Condition(name, op, operand)))
            else:
                raise _bad(f"operator {str(op)[:40]!r} is not allowed")
        return out

    def count(self, condition: Condition) -> Condition:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise _bad(f"more than {MAX_CONDITIONS} conditions")
        return condition


def parse_filter(value: Mapping[str, Any] | None) -> Group | None:
    """The filter tree, or None for no filter; InvalidArgumentError names the problem."""
    if not value:
        return None
    return _Parser().node(value, 1)


# -- MongoDB ---------------------------------------------------------------------


def _mongo_condition(c: Condition) -> dict[str, Any]:
    path = "metadata." + c.field  # filters name metadata fields
    if c.op == "$eq":
        return {path: c.value}
    if c.op in ("$in", "$nin"):
        return {path: {c.op: list(c.value)}}
    return {path: {c.op: c.value}}


def to_mongo(tree: Group | None) -> dict[str, Any]:
    if tree is None:
        return {}

    def walk(node: Condition | Group) -> dict[str, Any]:
        if isinstance(node, Condition):
            return _mongo_condition(node)
        if len(node.children) == 1:  # one condition or group: no list around it
            return walk(node.children[0])
        return {node.op: [walk(child) for child in node.children]}

    return walk(tree)
