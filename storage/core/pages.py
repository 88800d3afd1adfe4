"""Opaque page tokens for List RPCs: base64url of a small versioned document."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from storage.core.errors import InvalidArgumentError, Reason

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "decode_page_token",
    "encode_page_token",
    "page_size",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
_MAX_TOKEN_LENGTH = 512


def page_size(requested: int) -> int:
    """0 means the default; negative or above the maximum is refused."""
    if requested < 0:
        raise InvalidArgumentError("page_size must not be negative", field="page_size")
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgumentError(f"page_size must be at most {MAX_PAGE_SIZE}", field="page_size")
    return requested or DEFAULT_PAGE_SIZE


def encode_page_token(*, kind: str, after: str) -> str:
    raw = json.dumps({"v": 1, "k": kind, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, *, kind: str, id_pattern: re.Pattern[str]) -> str | None:
    """The id to continue after, or None for the first page."""
    if not token:
        return None
    try:
        if len(token) > _MAX_TOKEN_LENGTH:
            raise ValueError
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after = data["a"]
        if data.get("v") != 1 or data.get("k") != kind or not isinstance(after, str):
            raise ValueError
        if not id_pattern.match(after):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgumentError(
            "page_token is invalid; pass the next_page_token of a previous response",
            field="page_token",
            reason=Reason.PAGE_TOKEN_INVALID,
        ) from None
    return after


def page_of[D: Mapping[str, Any], T](
    docs: list[D], *, page_size: int, kind: str, key: str, build: Callable[[D], T]
) -> tuple[list[T], str]:
    """A page read with `limit(page_size + 1)`: its items, and the token of the next page
    (the `key` field of its last document), empty when there is none."""
    items = [build(d) for d in docs[:page_size]]
    more = len(docs) > page_size
    return items, encode_page_token(kind=kind, after=str(docs[page_size - 1][key])) if more else ""
