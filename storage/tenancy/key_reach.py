"""How far a key reaches: the rule by which a key sees and manages other keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PERMISSIONS", "KeyReach"]

PERMISSIONS = ("read", "write", "delete", "admin")


def _implied(permissions: frozenset[str]) -> frozenset[str]:
    return frozenset(PERMISSIONS) if "admin" in permissions else permissions


@dataclass(frozen=True, slots=True)
class KeyReach:
    """How far a key reaches: its permissions and its namespace allow-list (empty: every
    namespace of its environment).

    A key sees and manages only keys whose reach lies within its own: permissions no
    higher (ADMIN implies all) and, when its own allow-list is restricted, a non-empty
    allow-list inside it. Otherwise a restricted ADMIN key could rotate an unrestricted
    one and act with its secret. One rule for creating, reading, listing, rotating and
    revoking: `covers` for a key about to be created, `query` for keys in the store.
    """

    permissions: frozenset[str]
    namespace_ids: frozenset[str]
    # the key's workload binding (storage/core/peer_bindings.py); empty: any peer
    bound_peers: frozenset[str] = frozenset()

    def covers(
        self,
        *,
        permissions: frozenset[str],
        namespace_ids: frozenset[str],
        bound_peers: frozenset[str] = frozenset(),
    ) -> bool:
        if not _implied(permissions) <= _implied(self.permissions):
            return False
        if self.namespace_ids and not (namespace_ids and namespace_ids <= self.namespace_ids):
            return False
        # a bound key reaches only keys bound to entries of its own binding: otherwise it
        # could mint or rotate a key usable from anywhere and step out of its workload
        if self.bound_peers:
            return bool(bound_peers) and bound_peers <= self.bound_peers
        return True

    def reaches_everything(self) -> bool:
        """Every key of its environment lies within this reach (ADMIN, no allow-list, no
        binding): the keys themselves need not be read."""
        return "admin" in self.permissions and not self.namespace_ids and not self.bound_peers

    def query(self) -> dict[str, Any]:
        """The same rule as a MongoDB filter, so a list is filtered by the store and its
        pages stay full."""
        query: dict[str, Any] = {}
        if "admin" not in self.permissions:
            query["permissions"] = {"$not": {"$elemMatch": {"$nin": sorted(self.permissions)}}}
        if self.namespace_ids:
            query["namespace_ids.0"] = {"$exists": True}
            query["namespace_ids"] = {"$not": {"$elemMatch": {"$nin": sorted(self.namespace_ids)}}}
        if self.bound_peers:
            query["bound_peers.0"] = {"$exists": True}
            query["bound_peers"] = {"$not": {"$elemMatch": {"$nin": sorted(self.bound_peers)}}}
        return query
