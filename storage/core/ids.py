"""Public and internal identifiers (docs/design.md, Identifiers), and the ids clients choose."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from datetime import datetime

from storage.core.errors import InvalidArgumentError

__all__ = [
    "BASE62",
    "CLIENT_ID_RE",
    "KEY_ID_RE",
    "NAMESPACE_ID_RE",
    "ORGANIZATION_ID_RE",
    "TIME_ORDERED_BODY",
    "base62_fixed",
    "check_client_id",
    "derived_time_ordered_id",
    "new_internal_id",
    "new_key_id",
    "new_namespace_id",
    "new_organization_id",
    "prefixed_id_re",
    "random_base62",
    "time_ordered_id",
]

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_BODY = 20
TIME_ORDERED_BODY = 20  # 8 base62 characters of milliseconds, then 12 random ones


def prefixed_id_re(prefix: str, *, length: int = _ID_BODY) -> re.Pattern[str]:
    """`<prefix>_` and `length` base62 characters: the form of every id meshgate mints."""
    return re.compile(rf"^{re.escape(prefix)}_[0-9A-Za-z]{{{length}}}$")


ORGANIZATION_ID_RE = prefixed_id_re("org")
NAMESPACE_ID_RE = prefixed_id_re("ns")
KEY_ID_RE = prefixed_id_re("key")

# ids a client chooses (documents, vector points)
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_client_id(value: str, *, what: str, field: str | None = None) -> str:
    """`what` names the id in the message; `field`, the request field it came from, if known."""
    if not CLIENT_ID_RE.match(value):
        raise InvalidArgumentError(
            f"{what} must be 1-128 characters of A-Z a-z 0-9 _ . : -", field=field
        )
    return value


def random_base62(length: int) -> str:
    """`length` characters from a CSPRNG, uniformly over base62: one number below 62**length
    in base62, so one draw from the OS per id rather than one per character (`secrets.choice`
    per character meant about 20 `getrandom` calls for an audit event id)."""
    return base62_fixed(secrets.randbelow(62**length), length)


def new_organization_id() -> str:
    return "org_" + random_base62(_ID_BODY)


def new_namespace_id() -> str:
    return "ns_" + random_base62(_ID_BODY)


def new_key_id() -> str:
    return "key_" + random_base62(_ID_BODY)


def new_internal_id() -> str:
    """The hidden primary key of an organization: a random UUID, never shown."""
    return str(uuid.uuid4())


def base62_fixed(value: int, width: int) -> str:
    """`value` in base62, padded to `width`: sorts like the number (BASE62 is in ASCII order)."""
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    if value:
        raise ValueError("value does not fit")
    return "".join(reversed(digits))


def time_ordered_id(prefix: str, at: datetime, *, suffix: str | None = None) -> str:
    """`<prefix>_<8 chars of ms since the epoch><12 chars>`: ids sort by `at`.

    The 12 characters are random, or `suffix` when the id must be deterministic.
    """
    tail = suffix if suffix is not None else random_base62(12)
    if len(tail) != 12:
        raise ValueError("suffix must be 12 characters")
    return f"{prefix}_{base62_fixed(int(at.timestamp() * 1000), 8)}{tail}"


def derived_time_ordered_id(prefix: str, at: datetime, key: str) -> str:
    """`time_ordered_id` whose 12 characters come from `key`: the same key and time always
    give the same id (for writes that must be idempotent across retries and replicas)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:12])
    return time_ordered_id(prefix, at, suffix=base62_fixed(digest % 62**12, 12))
