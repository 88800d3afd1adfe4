"""Creating the first organization and its ADMIN key (`meshgate bootstrap`, `make run`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storage.backends.mongo import MongoStore
from storage.tenancy.keys import KeyStore
from storage.tenancy.organizations import OrganizationStore

__all__ = ["BootstrapResult", "bootstrap", "write_secret_file"]


@dataclass(frozen=True)
class BootstrapResult:
    organization_id: str
    key_id: str
    secret: str

    def __repr__(self) -> str:
        return f"BootstrapResult(organization_id={self.organization_id!r}, key_id={self.key_id!r})"


class WithMongo(Protocol):
    """What bootstrapping needs of the stores: MongoDB alone (Backends has it)."""

    @property
    def mongo(self) -> MongoStore: ...


async def bootstrap(
    backends: WithMongo, *, name: str, plan: str, environment: str
) -> BootstrapResult:
    organization = await OrganizationStore(mongo=backends.mongo).create(name=name, plan=plan)
    record, secret = await KeyStore(mongo=backends.mongo).create(
        organization_id=organization.organization_id,
        name="bootstrap admin",
        environment=environment,
        permissions=frozenset({"admin"}),
        namespace_ids=[],
        expires_at=None,
    )
    return BootstrapResult(organization.organization_id, record.key_id, secret)


def write_secret_file(path: Path, secret: str) -> None:
    """Owner-only file holding one secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
