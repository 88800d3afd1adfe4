"""Public and internal identifiers (see DESIGN.md, Identifiers)."""

from __future__ import annotations

import re
import secrets
import uuid

__all__ = [
    "BASE62",
    "KEY_ID_RE",
    "NAMESPACE_ID_RE",
    "ORGANIZATION_ID_RE",
    "new_internal_id",
    "new_key_id",
    "new_namespace_id",
    "new_organization_id",
    "random_base62",
]

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_BODY = 20

ORGANIZATION_ID_RE = re.compile(rf"^org_[0-9A-Za-z]{{{_ID_BODY}}}$")
NAMESPACE_ID_RE = re.compile(rf"^ns_[0-9A-Za-z]{{{_ID_BODY}}}$")
KEY_ID_RE = re.compile(rf"^key_[0-9A-Za-z]{{{_ID_BODY}}}$")


def random_base62(length: int) -> str:
    """`length` characters from a CSPRNG, uniformly over base62."""
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_organization_id() -> str:
    return "org_" + random_base62(_ID_BODY)


def new_namespace_id() -> str:
    return "ns_" + random_base62(_ID_BODY)


def new_key_id() -> str:
    return "key_" + random_base62(_ID_BODY)


def new_internal_id() -> str:
    """The hidden primary key of an organization: a random UUID, never shown."""
    return str(uuid.uuid4())
