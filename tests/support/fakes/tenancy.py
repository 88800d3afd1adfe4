"""Organizations and namespaces in memory: what the identity and namespace steps read
(`Organizations`, interceptors/identity.py; `Namespaces`, interceptors/namespace.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from storage.core.clock import utc_now
from storage.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from storage.core.ids import (
    NAMESPACE_ID_RE,
    ORGANIZATION_ID_RE,
    new_internal_id,
    new_namespace_id,
    new_organization_id,
)
from storage.tenancy.namespaces import NAMESPACE_NAME_RE, Namespace
from storage.tenancy.organizations import Organization

__all__ = ["FakeNamespaces", "FakeOrganizations"]

# longest x-namespace reference looked up (NamespaceStore refuses longer ones)
_MAX_REFERENCE = 128


def _to_the_millisecond(moment: datetime) -> datetime:
    """What MongoDB keeps of a datetime."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class FakeOrganizations:
    """`OrganizationStore`'s `create`, `get` and `cached`: an organization is cached by the
    `get` that read it, never by its creation (tests/contracts/test_organizations.py)."""

    def __init__(self, *, now: Callable[[], datetime] = utc_now) -> None:
        self._by_id: dict[str, Organization] = {}
        self._cached: dict[str, Organization] = {}
        self._now = now

    async def create(self, *, name: str, plan: str) -> Organization:
        organization = Organization(
            internal_id=new_internal_id(),
            organization_id=new_organization_id(),
            name=name,
            plan=plan,
            created_at=self._now(),
        )
        created = replace(organization, created_at=_to_the_millisecond(organization.created_at))
        self._by_id[organization.organization_id] = created
        return organization

    def cached(self, organization_id: str) -> Organization | None:
        return self._cached.get(organization_id)

    async def get(self, organization_id: str) -> Organization:
        if not ORGANIZATION_ID_RE.match(organization_id):
            raise NotFoundError("organization not found")
        organization = self._by_id.get(organization_id)
        if organization is None:
            raise NotFoundError("organization not found")
        self._cached[organization_id] = organization
        return organization


class FakeNamespaces:
    """`NamespaceStore`'s `create`, `resolve`, `cached`, `mark_deleting` and `forget`: by id
    or name within one organization; other organizations', other environments' and deleted
    namespaces are all NOT_FOUND (tests/contracts/test_namespaces.py)."""

    def __init__(self, *, now: Callable[[], datetime] = utc_now) -> None:
        self._namespaces: dict[str, tuple[Namespace, bool]] = {}  # id -> (it, active)
        self._cached: dict[tuple[str, str], Namespace] = {}
        self._now = now

    async def create(self, *, internal_id: str, name: str, environment: str) -> Namespace:
        if not NAMESPACE_NAME_RE.match(name):
            raise InvalidArgumentError(
                "name must be 1-63 characters of a-z, 0-9 and '-', starting with a letter"
            )
        if any(
            n.internal_id == internal_id and n.name == name for n, _ in self._namespaces.values()
        ):
            raise AlreadyExistsError(f"a namespace named {name!r} already exists")
        namespace = Namespace(
            namespace_id=new_namespace_id(),
            internal_id=internal_id,
            name=name,
            environment=environment,
            created_at=self._now(),
        )
        kept = replace(namespace, created_at=_to_the_millisecond(namespace.created_at))
        self._namespaces[namespace.namespace_id] = (kept, True)
        return namespace

    def forget(self, namespace_id: str) -> None:
        self._cached = {k: v for k, v in self._cached.items() if v.namespace_id != namespace_id}

    def cached(self, *, internal_id: str, environment: str, reference: str) -> Namespace | None:
        cached = self._cached.get((internal_id, reference))
        if cached is not None and cached.environment != environment:
            raise NotFoundError("namespace not found")
        return cached

    async def resolve(self, *, internal_id: str, environment: str, reference: str) -> Namespace:
        cached = self.cached(internal_id=internal_id, environment=environment, reference=reference)
        if cached is not None:
            return cached
        if len(reference) > _MAX_REFERENCE:
            raise InvalidArgumentError(f"x-namespace must be at most {_MAX_REFERENCE} characters")
        by_id = NAMESPACE_ID_RE.match(reference) is not None
        if not by_id and not NAMESPACE_NAME_RE.match(reference):
            raise NotFoundError("namespace not found")
        found = next(
            (
                namespace
                for namespace, active in self._namespaces.values()
                if active
                and namespace.internal_id == internal_id
                and (namespace.namespace_id if by_id else namespace.name) == reference
            ),
            None,
        )
        if found is None:
            raise NotFoundError("namespace not found")
        self._cached[(internal_id, reference)] = found
        if found.environment != environment:
            raise NotFoundError("namespace not found")
        return found

    async def mark_deleting(self, *, internal_id: str, namespace_id: str) -> bool:
        entry = self._namespaces.get(namespace_id)
        self.forget(namespace_id)
        if entry is None or entry[0].internal_id != internal_id:
            return False
        self._namespaces[namespace_id] = (entry[0], False)
        return True
