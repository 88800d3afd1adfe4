"""API key secrets: `mg_<env>_<random>_<checksum>`.

The random part is 40 base62 characters (~238 bits), so a fast hash (SHA-256)
is the right digest: there is nothing to brute-force. The CRC32 checksum lets
malformed or mistyped keys be refused before any lookup, and gives secret
scanners a pattern with few false positives.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

from storage.core.environments import SECRET_TOKENS
from storage.core.ids import base62_fixed, random_base62

__all__ = [
    "MAX_SECRET_LENGTH",
    "MintedSecret",
    "ParsedSecret",
    "digest_secret",
    "mint_secret",
    "parse_secret",
]

_TOKEN_ENVIRONMENTS = {token: name for name, token in SECRET_TOKENS.items()}
_RANDOM_LENGTH = 40
_CHECKSUM_LENGTH = 6
_SECRET_RE = re.compile(
    rf"^mg_({'|'.join(_TOKEN_ENVIRONMENTS)})"
    rf"_([0-9A-Za-z]{{{_RANDOM_LENGTH}}})_([0-9A-Za-z]{{{_CHECKSUM_LENGTH}}})$"
)
MAX_SECRET_LENGTH = 64
_DISPLAY_RANDOM_CHARS = 6


def _checksum(body: str) -> str:
    """CRC32 of the body in 6 base62 digits (62**6 > 2**32: every CRC fits)."""
    return base62_fixed(zlib.crc32(body.encode("ascii")), _CHECKSUM_LENGTH)


@dataclass(frozen=True, slots=True)
class MintedSecret:
    secret: str
    digest: str
    display_prefix: str

    def __repr__(self) -> str:  # never print the secret
        return f"MintedSecret(display_prefix={self.display_prefix!r})"


@dataclass(frozen=True, slots=True)
class ParsedSecret:
    environment: str
    digest: str


def digest_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def mint_secret(environment: str) -> MintedSecret:
    body = f"mg_{SECRET_TOKENS[environment]}_{random_base62(_RANDOM_LENGTH)}"
    secret = f"{body}_{_checksum(body)}"
    display = secret[: len(body) - _RANDOM_LENGTH + _DISPLAY_RANDOM_CHARS]
    return MintedSecret(secret=secret, digest=digest_secret(secret), display_prefix=display)


def parse_secret(secret: str) -> ParsedSecret | None:
    """The environment and digest of a well-formed secret, or None (no lookup needed)."""
    if len(secret) > MAX_SECRET_LENGTH:
        return None
    match = _SECRET_RE.match(secret)
    if match is None:
        return None
    body = secret[: -(_CHECKSUM_LENGTH + 1)]
    if _checksum(body) != match.group(3):
        return None
    return ParsedSecret(
        environment=_TOKEN_ENVIRONMENTS[match.group(1)], digest=digest_secret(secret)
    )
