"""Page tokens as callers see them: a store's cursor, bound to the call that produced it,
with an expiry, authenticated by HMAC-SHA256 under a server-side key.

A store pages by a cursor of its own (`storage/core/pages.py`: the last id of the page).
What a caller receives is that cursor sealed: version, key id, expiry and cursor,
followed by an HMAC over those and a *binding*, a digest of everything the token may be
used with (organization, environment, namespace, method and query; built by
`interceptors/page_tokens.py`). The binding travels in no token: a token presented with
any other binding, altered, forged or signed by a key the server no longer holds fails
the HMAC check, and an expired one is refused after it. Either way INVALID_ARGUMENT,
before the store sees the cursor.

Keys rotate like the other secrets: the first key signs, every key verifies (a token
names its key by a short id), so a key can be added first and the old one removed
once its tokens have expired (an hour).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import time
from collections.abc import Callable, Sequence

from storage.core.errors import InvalidArgumentError, Reason

__all__ = [
    "MIN_KEY_BYTES",
    "PAGE_TOKEN_TTL_S",
    "PageTokenError",
    "PageTokens",
    "key_id",
]

PAGE_TOKEN_TTL_S = 3600.0
MIN_KEY_BYTES = 32
_VERSION = 1
_HEADER = struct.Struct(">BIQ")  # version, key id, expiry (epoch seconds)
_MAC_BYTES = 32
_MAX_TOKEN_CHARS = 2048
_DOMAIN = b"meshgate page token\x00"
_ELSEWHERE = (
    "page_token does not belong to this request: pass the next_page_token of the previous"
    " response to the same method, in the same namespace, with the same query"
)
_EXPIRED = "page_token has expired; list again from the first page"


class PageTokenError(InvalidArgumentError):
    """A page token that is not this request's, altered, forged or expired."""

    default_reason = Reason.PAGE_TOKEN_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message, field="page_token")


def key_id(key: bytes) -> int:
    """A short name for a key (32 bits of a digest), carried in each token it signs."""
    digest = hashlib.sha256(b"meshgate page token key\x00" + key).digest()
    return int.from_bytes(digest[:4], "big")


class PageTokens:
    """Seals cursors into page tokens and opens them again; no I/O."""

    def __init__(
        self,
        keys: Sequence[bytes],
        *,
        ttl_s: float = PAGE_TOKEN_TTL_S,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("page tokens need at least one key")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"a page token key needs at least {MIN_KEY_BYTES} bytes")
        self._signing = keys[0]
        self._signing_id = key_id(keys[0])
        self._verifying = {key_id(key): key for key in reversed(keys)}
        self._ttl_s = ttl_s
        self._now = now

    def __repr__(self) -> str:  # the keys stay out of logs and tracebacks
        return f"PageTokens(keys={len(self._verifying)}, ttl_s={self._ttl_s})"

    def seal(self, cursor: str, *, binding: bytes) -> str:
        """The token for `cursor`; empty for an empty cursor (no next page)."""
        if not cursor:
            return ""
        expires = int(self._now() + self._ttl_s)
        body = _HEADER.pack(_VERSION, self._signing_id, expires) + cursor.encode()
        mac = _mac(self._signing, body, binding)
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")

    def open(self, token: str, *, binding: bytes) -> str:
        """The cursor sealed in `token`, if it was issued for `binding` and has not expired;
        empty for an empty token (the first page)."""
        if not token:
            return ""
        raw = _decoded(token)
        if raw is None or len(raw) < _HEADER.size + _MAC_BYTES:
            raise PageTokenError(_ELSEWHERE)
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        version, kid, expires = _HEADER.unpack_from(body)
        key = self._verifying.get(kid)
        if version != _VERSION or key is None:
            raise PageTokenError(_ELSEWHERE)
        if not hmac.compare_digest(mac, _mac(key, body, binding)):
            raise PageTokenError(_ELSEWHERE)
        if expires < self._now():
            raise PageTokenError(_EXPIRED)
        try:
            return body[_HEADER.size :].decode()
        except UnicodeDecodeError:  # only a key holder could have signed it
            raise PageTokenError(_ELSEWHERE) from None


def _mac(key: bytes, body: bytes, binding: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + binding + b"\x00" + body, hashlib.sha256).digest()


def _decoded(token: str) -> bytes | None:
    if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
        return None
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
