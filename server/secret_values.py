"""The settings that hold secrets: `Secret` (masked in every repr) and the readers of the
variables that carry one, each with its `*_FILE` variant (the way container secrets are
mounted): the MongoDB URI, the webhook sealing keys, the page token keys and the audit
checkpoint keys.

A reader checks the value's shape now, so a bad key stops the server at start-up with a
message naming the variable, never the value.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from server.env_values import SettingsError
from storage.core.checkpoints import CheckpointError, CheckpointKeys

__all__ = [
    "Secret",
    "audit_checkpoint_keys",
    "check_mongodb_uri",
    "key_list",
    "mongodb_uri",
    "page_token_keys",
    "read_secret",
    "sealing_key",
    "sealing_key_list",
    "sealing_keys",
]


@dataclass(frozen=True, slots=True)
class Secret:
    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    def __str__(self) -> str:
        return "****"


def read_secret(env: Mapping[str, str], name: str) -> Secret | None:
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Secret(Path(path).read_text().strip())
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    value = env.get(name)
    return Secret(value) if value else None


def check_mongodb_uri(uri: str, *, name: str = "MESHGATE_MONGODB_URI") -> str:
    """Its options may weaken the write and read concerns (at the operator's risk), but
    never move reads off the primary: meshgate reads its own writes."""
    for key, value in parse_qsl(urlsplit(uri).query):
        if key.lower() == "readpreference" and value.lower() != "primary":
            raise SettingsError(
                f"{name}: readPreference must be primary (meshgate reads its own writes)"
            )
    return uri


def mongodb_uri(env: Mapping[str, str]) -> Secret | None:
    secret = read_secret(env, "MESHGATE_MONGODB_URI")
    if secret is not None:
        check_mongodb_uri(secret.reveal())
    return secret


def sealing_key(env: Mapping[str, str]) -> Secret | None:
    name = "MESHGATE_WEBHOOK_SECRET_KEY"
    secret = read_secret(env, name)
    if secret is None:
        return None
    try:
        key = base64.b64decode(secret.reveal(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SettingsError(f"{name} must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)")
    return secret


_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def sealing_key_list(value: str) -> tuple[tuple[str, bytes], ...]:
    """`kid:base64,...`: ids of 1-32 of [A-Za-z0-9_-], distinct; keys of 32 bytes."""
    pairs: list[tuple[str, bytes]] = []
    for part in value.split(","):
        if not part.strip():
            continue
        kid, _, encoded = part.strip().partition(":")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not _KEY_ID_RE.match(kid) or len(key) != 32:
            raise ValueError
        pairs.append((kid, key))
    if not pairs or len({kid for kid, _ in pairs}) != len(pairs):
        raise ValueError
    return tuple(pairs)


def sealing_keys(env: Mapping[str, str]) -> Secret | None:
    name = "MESHGATE_WEBHOOK_SECRET_KEYS"
    secret = read_secret(env, name)
    if secret is None:
        return None
    if read_secret(env, "MESHGATE_WEBHOOK_SECRET_KEY") is not None:
        raise SettingsError(
            f"{name} and MESHGATE_WEBHOOK_SECRET_KEY are both set; use {name} alone"
        )
    try:
        sealing_key_list(secret.reveal())
    except ValueError:
        raise SettingsError(
            f"{name} must be comma-separated kid:base64 entries, the primary first: distinct"
            " ids of 1-32 characters of A-Z a-z 0-9 _ -, keys of 32 bytes"
            " (e.g. `k2:$(openssl rand -base64 32),k1:...`)"
        ) from None
    return secret


def key_list(secret: Secret) -> tuple[bytes, ...]:
    """Comma-separated base64 keys of at least 32 bytes each, the signing key first."""
    keys = []
    for part in secret.reveal().split(","):
        if not part.strip():
            continue
        try:
            key = base64.b64decode(part.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) < 32:
            raise ValueError
        keys.append(key)
    if not keys:
        raise ValueError
    return tuple(keys)


def page_token_keys(env: Mapping[str, str]) -> Secret | None:
    name = "MESHGATE_PAGE_TOKEN_KEYS"
    secret = read_secret(env, name)
    if secret is None:
        return None
    try:
        key_list(secret)
    except ValueError:
        raise SettingsError(
            f"{name} must be comma-separated base64 keys of at least 32 bytes each"
            " (e.g. `openssl rand -base64 32`), the signing key first"
        ) from None
    return secret


def audit_checkpoint_keys(env: Mapping[str, str]) -> Secret | None:
    """Note keys, one a line (or comma-separated), the signing key first: the format of Go's
    golang.org/x/mod/sumdb/note (`meshgate audit keygen NAME` makes one)."""
    name = "MESHGATE_AUDIT_CHECKPOINT_KEYS"
    secret = read_secret(env, name)
    if secret is None:
        return None
    try:
        CheckpointKeys.parse(secret.reveal())
    except CheckpointError as exc:
        raise SettingsError(
            f"{name}: {exc} (expected the signing key PRIVATE+KEY+<name>+<id>+<base64> first,"
            " then keys that only verify: PRIVATE+KEY+... or <name>+<id>+<base64>)"
        ) from None
    return secret
