"""Namespace-scoped MongoDB access: the only way to touch namespaced data.

A `ScopedCollection` is bound to one `Scope` (an organization's internal_id and
one namespace_id). It adds both to every filter, stamps both on every insert,
refuses filters, documents and updates that name them, and refuses operators
that escape filtering (`$where`, `$function`, `$accumulator`, `$expr`,
`$lookup` and friends). Returned documents never carry internal_id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from storage.core.errors import InvalidArgumentError
from storage.core.filters import MAX_MONGO_DEPTH
from storage.core.ids import NAMESPACE_ID_RE

__all__ = [
    "FORBIDDEN_OPERATORS",
    "SCOPE_FIELDS",
    "Scope",
    "ScopeViolationError",
    "ScopedCollection",
    "check_filter",
    "check_projection",
    "check_update",
]

Document = dict[str, Any]

SCOPE_FIELDS = frozenset({"namespace_id", "internal_id"})
# Operators that run code, compare across fields/documents, or read other collections.
FORBIDDEN_OPERATORS = frozenset(
    {
        "$where",
        "$function",
        "$accumulator",
        "$expr",
        "$jsonSchema",
        "$lookup",
        "$graphLookup",
        "$unionWith",
        "$out",
        "$merge",
        "$documents",
        "$collStats",
        "$currentOp",
        "$listSessions",
    }
)
_UPDATE_OPERATORS = frozenset(
    {
        "$set",
        "$unset",
        "$inc",
        "$mul",
        "$min",
        "$max",
        "$rename",
        "$push",
        "$pull",
        "$pullAll",
        "$addToSet",
        "$pop",
        "$setOnInsert",
        "$currentDate",
    }
)
_ALLOWED_STAGES = frozenset(
    {"$match", "$project", "$sort", "$limit", "$skip", "$group", "$count", "$unwind", "$addFields"}
)
# Filters and pipelines are small: anything deeper or larger is an attack or a bug. The
# depth admits the deepest filter the filter language compiles to, inside one more `$and`
# (a page cursor), so this guard never refuses what the filter parser admitted.
MAX_DEPTH = MAX_MONGO_DEPTH + 2
MAX_NODES = 2_000
# Documents and updates carry what the stores admitted (a document body may nest 32
# levels and fill 256 KiB): these bounds sit above that, with room for the stored
# document around the body, and only stop what could never have been admitted.
MAX_DOCUMENT_DEPTH = 40
MAX_DOCUMENT_NODES = 300_000


class ScopeViolationError(InvalidArgumentError):
    """A filter, document or update tried to name the scope or escape it (FIELD_INVALID)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Who owns the data: the organization's internal_id and one namespace."""

    internal_id: str
    namespace_id: str

    def __post_init__(self) -> None:
        if not self.internal_id or not isinstance(self.internal_id, str):
            raise ValueError("scope needs an organization internal_id")
        if not isinstance(self.namespace_id, str) or not NAMESPACE_ID_RE.match(self.namespace_id):
            raise ValueError("scope needs a namespace_id")

    def __repr__(self) -> str:  # internal_id stays out of logs and tracebacks
        return f"Scope(namespace_id={self.namespace_id!r})"


def _is_scope_path(key: str) -> bool:
    head = key.split(".", 1)[0]
    return head in SCOPE_FIELDS


class _Walker:
    """Counts nodes and depth while checking one filter, document or pipeline."""

    def __init__(
        self, what: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES
    ) -> None:
        self.what = what
        self.nodes = 0
        self.max_depth = max_depth
        self.max_nodes = max_nodes

    def visit(self, value: Any, depth: int, *, in_filter: bool) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise ScopeViolationError(
                f"{self.what} is too large (more than {self.max_nodes} nodes)"
            )
        if depth > self.max_depth:
            raise ScopeViolationError(f"{self.what} is nested too deeply (limit {self.max_depth})")
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ScopeViolationError(f"{self.what} has a non-string key")
                if key in FORBIDDEN_OPERATORS:
                    raise ScopeViolationError(f"operator {key} is not allowed in {self.what}")
                if _is_scope_path(key):
                    raise ScopeViolationError(f"{self.what} may not name the field {key!r}")
                if not in_filter and key.startswith("$"):
                    raise ScopeViolationError(f"{self.what} may not use operator keys ({key})")
                self.visit(item, depth + 1, in_filter=in_filter)
        elif isinstance(value, list | tuple):
            for item in value:
                self.visit(item, depth + 1, in_filter=in_filter)
        elif (
            isinstance(value, str)
            and in_filter
            and value.startswith("$")
            and _is_scope_path(value[1:])
        ):
            raise ScopeViolationError(f"{self.what} may not refer to {value!r}")


def check_filter(query: Mapping[str, Any] | None, *, what: str = "filter") -> None:
    """Refuse filters that name the scope fields or use escaping operators."""
    if query is None:
        return
    if not isinstance(query, Mapping):
        raise ScopeViolationError(f"{what} must be a document")
    _Walker(what).visit(query, 0, in_filter=True)


def check_document(document: Mapping[str, Any]) -> None:
    if not isinstance(document, Mapping):
        raise ScopeViolationError("document must be a mapping")
    walker = _Walker("document", max_depth=MAX_DOCUMENT_DEPTH, max_nodes=MAX_DOCUMENT_NODES)
    walker.visit(document, 0, in_filter=False)


def check_update(update: Mapping[str, Any]) -> None:
    """Only field-update operators, never touching the scope fields."""
    if not isinstance(update, Mapping) or not update:
        raise ScopeViolationError("update must be a non-empty document of update operators")
    walker = _Walker("update", max_depth=MAX_DOCUMENT_DEPTH, max_nodes=MAX_DOCUMENT_NODES)
    for operator, fields in update.items():
        if operator not in _UPDATE_OPERATORS:
            raise ScopeViolationError(f"update operator {operator!r} is not allowed")
        if not isinstance(fields, Mapping):
            raise ScopeViolationError(f"{operator} needs a document of fields")
        for key, value in fields.items():
            if _is_scope_path(key) or (
                operator == "$rename" and isinstance(value, str) and _is_scope_path(value)
            ):
                raise ScopeViolationError(f"update may not change the field {key!r}")
            if key.startswith("$"):
                raise ScopeViolationError(f"update may not use operator keys ({key})")
            walker.visit(value, 1, in_filter=operator in {"$pull", "$pullAll"})


def check_projection(projection: Mapping[str, Any] | None) -> dict[str, int] | None:
    """Plain inclusion or exclusion of fields: no operators, never the scope fields."""
    if projection is None:
        return None
    if not isinstance(projection, Mapping) or not projection:
        raise ScopeViolationError("projection must be a non-empty document of fields")
    out: dict[str, int] = {}
    for key, value in projection.items():
        if not isinstance(key, str) or not key or key.startswith("$") or _is_scope_path(key):
            raise ScopeViolationError(f"projection may not name {key!r}")
        if value not in (0, 1) or not isinstance(value, int | bool):
            raise ScopeViolationError("projection values must be 0 or 1")
        out[key] = int(value)
    return out


def _check_pipeline(pipeline: Sequence[Mapping[str, Any]]) -> None:
    if not isinstance(pipeline, Sequence) or isinstance(pipeline, str | bytes):
        raise ScopeViolationError("pipeline must be a list of stages")
    walker = _Walker("pipeline")
    for stage in pipeline:
        if not isinstance(stage, Mapping) or len(stage) != 1:
            raise ScopeViolationError("each pipeline stage must have exactly one operator")
        ((name, body),) = stage.items()
        if name not in _ALLOWED_STAGES:
            raise ScopeViolationError(f"pipeline stage {name!r} is not allowed")
        walker.visit(body, 1, in_filter=True)


class ScopedCollection:
    """A MongoDB collection seen through one `Scope`."""

    def __init__(self, collection: AsyncCollection[Document], scope: Scope) -> None:
        if not isinstance(scope, Scope):
            raise TypeError("ScopedCollection needs a Scope; unscoped access is not possible")
        self._collection = collection
        self._scope = scope
        self._stamp: Document = {
            "namespace_id": scope.namespace_id,
            "internal_id": scope.internal_id,
        }

    @property
    def scope(self) -> Scope:
        return self._scope

    @property
    def name(self) -> str:
        return self._collection.name

    def _scoped(self, query: Mapping[str, Any] | None) -> Document:
        check_filter(query)
        return {**self._stamp, **(query or {})}

    def _strip(self, document: Document | None) -> Document | None:
        if document is not None:
            document.pop("internal_id", None)
        return document

    async def insert_one(self, document: Mapping[str, Any]) -> Any:
        check_document(document)
        result = await self._collection.insert_one({**document, **self._stamp})
        return result.inserted_id

    async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> list[Any]:
        for document in documents:
            check_document(document)
        if not documents:
            return []
        result = await self._collection.insert_many([{**d, **self._stamp} for d in documents])
        return list(result.inserted_ids)

    async def find_one(
        self,
        query: Mapping[str, Any] | None = None,
        *,
        projection: Mapping[str, Any] | None = None,
    ) -> Document | None:
        return self._strip(
            await self._collection.find_one(self._scoped(query), check_projection(projection))
        )

    async def find(
        self,
        query: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        skip: int = 0,
        projection: Mapping[str, Any] | None = None,
    ) -> list[Document]:
        cursor = self._collection.find(self._scoped(query), check_projection(projection))
        if sort:
            for key, _ in sort:
                if _is_scope_path(key):
                    raise ScopeViolationError(f"sort may not name the field {key!r}")
            cursor = cursor.sort(list(sort))
        if skip:
            cursor = cursor.skip(skip)
        if limit:
            cursor = cursor.limit(limit)
        out: list[Document] = []
        async for doc in cursor:
            doc.pop("internal_id", None)
            out.append(doc)
        return out

    async def iterate(
        self, *, sort: Sequence[tuple[str, int]], batch_size: int
    ) -> AsyncIterator[Document]:
        """Every document of the scope in `sort` order through one cursor, `batch_size` at a
        time: a whole namespace (a backup) without holding it in memory, and without the
        range scan a page after page read costs on every page."""
        for key, _ in sort:
            if _is_scope_path(key):
                raise ScopeViolationError(f"sort may not name the field {key!r}")
        cursor = self._collection.find(self._scoped(None)).sort(list(sort)).batch_size(batch_size)
        async for doc in cursor:
            doc.pop("internal_id", None)
            yield doc

    async def count_documents(self, query: Mapping[str, Any] | None = None) -> int:
        return await self._collection.count_documents(self._scoped(query))

    async def update_one(
        self, query: Mapping[str, Any], update: Mapping[str, Any], *, upsert: bool = False
    ) -> int:
        check_update(update)
        result = await self._collection.update_one(self._scoped(query), update, upsert=upsert)
        return result.matched_count

    async def find_one_and_update(
        self,
        query: Mapping[str, Any],
        update: Mapping[str, Any],
        *,
        projection: Mapping[str, Any] | None = None,
    ) -> Document | None:
        """Update one document and return it as it is after the update (None if none matched)."""
        check_update(update)
        return self._strip(
            await self._collection.find_one_and_update(
                self._scoped(query),
                update,
                projection=check_projection(projection),
                return_document=ReturnDocument.AFTER,
            )
        )

    async def update_many(self, query: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        check_update(update)
        result = await self._collection.update_many(self._scoped(query), update)
        return result.modified_count

    async def delete_one(self, query: Mapping[str, Any]) -> int:
        result = await self._collection.delete_one(self._scoped(query))
        return result.deleted_count

    async def delete_many(self, query: Mapping[str, Any] | None = None) -> int:
        result = await self._collection.delete_many(self._scoped(query))
        return result.deleted_count

    async def aggregate(self, pipeline: Sequence[Mapping[str, Any]]) -> list[Document]:
        """The caller's stages run on documents that no longer carry internal_id: it is
        projected away right after the scope's `$match`, so no expression (`$$ROOT`,
        `$$CURRENT`, `$getField`, ...) can reach it, whatever the stage."""
        _check_pipeline(pipeline)
        scoped = [{"$match": dict(self._stamp)}, {"$project": {"internal_id": 0}}, *pipeline]
        cursor = await self._collection.aggregate(scoped)
        return [doc async for doc in cursor]
