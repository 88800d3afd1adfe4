"""Secrets the server must read back (webhook signing secrets), sealed at rest.

API keys are stored as digests because the server only compares them;
webhook secrets are different: every delivery is signed with them, so the
server needs the secret itself. With `MESHGATE_WEBHOOK_SECRET_KEY` set they
are stored encrypted with AES-256-GCM, bound to the record they belong to
(the associated data), so a database dump alone does not reveal them and a
sealed value copied onto another record does not open. Without the key they
are stored as they are (the server warns at start-up).
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "SealedSecretError", "SecretBox"]

KEY_BYTES = 32


class SealedSecretError(Exception):
    """A stored secret does not open with the configured key (wrong key, or tampered)."""


class SecretBox:
    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"the sealing key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key) if key is not None else None

    @property
    def encrypts(self) -> bool:
        return self._aead is not None

    def __repr__(self) -> str:
        return f"SecretBox(encrypts={self.encrypts})"

    def seal(self, secret: str, *, context: str) -> dict[str, Any]:
        if self._aead is None:
            return {"v": 0, "p": secret}
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), context.encode())
        return {
            "v": 1,
            "n": base64.b64encode(nonce).decode(),
            "c": base64.b64encode(sealed).decode(),
        }

    def open(self, sealed: dict[str, Any], *, context: str) -> str:
        version = sealed.get("v")
        if version == 0:
            return str(sealed["p"])
        if version != 1 or self._aead is None:
            raise SealedSecretError("a sealed secret needs MESHGATE_WEBHOOK_SECRET_KEY to open")
        try:
            plain = self._aead.decrypt(
                base64.b64decode(sealed["n"]), base64.b64decode(sealed["c"]), context.encode()
            )
        except (InvalidTag, KeyError, ValueError):
            raise SealedSecretError(
                "a sealed secret does not open with the configured key"
            ) from None
        return plain.decode()
