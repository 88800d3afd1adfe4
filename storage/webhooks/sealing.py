"""Secrets the server must read back (webhook signing secrets), sealed at rest.

API keys are stored as digests because the server only compares them;
webhook secrets are different: every delivery is signed with them, so the
server needs the secret itself. With `MESHGATE_WEBHOOK_SECRET_KEY` set they
are stored encrypted with AES-256-GCM, bound to the record they belong to
(the associated data), so a database dump alone does not reveal them and a
sealed value copied onto another record does not open. Without the key they
are stored as they are (the server warns at start-up).

Sealing keys rotate without a restart of anything but the servers: each
sealed value names the key that sealed it (`k`, its key id). The box holds a
primary key, which seals, and older keys, which still open what they sealed.
`MESHGATE_WEBHOOK_SECRET_KEYS` lists them (`kid:base64,...`, the primary
first); `MESHGATE_WEBHOOK_SECRET_KEY` is one key with the id `default`. A
background job re-seals every secret under the primary
(`WebhookStore.reseal_pending`), after which an older key can be dropped.
Values sealed before key ids existed (`v: 1`, no `k`) open with whichever
configured key authenticates them (AES-GCM tells a wrong key from the right
one).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["DEFAULT_KEY_ID", "KEY_BYTES", "SealedSecretError", "SecretBox"]

KEY_BYTES = 32
# the id of the key given as MESHGATE_WEBHOOK_SECRET_KEY (one key, no id of its own)
DEFAULT_KEY_ID = "default"
# what `sealed_by` says of a value stored unencrypted
PLAIN = ""


class SealedSecretError(Exception):
    """A stored secret does not open with the configured key (wrong key, or tampered)."""


class SecretBox:
    """Seals under the primary key; opens with whichever configured key sealed the value.

    `keys` is one key (its id is `default`), or (key id, key) pairs, the primary
    first, or None (no encryption)."""

    def __init__(self, keys: bytes | Sequence[tuple[str, bytes]] | None) -> None:
        pairs = [(DEFAULT_KEY_ID, keys)] if isinstance(keys, bytes) else list(keys or ())
        if any(len(key) != KEY_BYTES for _, key in pairs):
            raise ValueError(f"the sealing key must be {KEY_BYTES} bytes")
        if len({kid for kid, _ in pairs}) != len(pairs):
            raise ValueError("the sealing key ids must differ")
        self._aeads = {kid: AESGCM(key) for kid, key in pairs}
        self._primary = pairs[0][0] if pairs else PLAIN

    @property
    def encrypts(self) -> bool:
        return bool(self._aeads)

    @property
    def primary(self) -> str:
        """The id of the key that seals ("" when secrets are stored unencrypted)."""
        return self._primary

    def __repr__(self) -> str:
        return f"SecretBox(encrypts={self.encrypts}, primary={self._primary!r})"

    def seal(self, secret: str, *, context: str) -> dict[str, Any]:
        if not self._aeads:
            return {"v": 0, "p": secret}
        nonce = os.urandom(12)
        sealed = self._aeads[self._primary].encrypt(nonce, secret.encode(), context.encode())
        return {
            "v": 2,
            "k": self._primary,
            "n": base64.b64encode(nonce).decode(),
            "c": base64.b64encode(sealed).decode(),
        }

    @staticmethod
    def sealed_by(sealed: dict[str, Any]) -> str | None:
        """The id of the key a value is sealed with: PLAIN for unencrypted, None when a
        value predates key ids."""
        version = sealed.get("v")
        if version == 0:
            return PLAIN
        return str(sealed["k"]) if version == 2 else None

    def open(self, sealed: dict[str, Any], *, context: str) -> str:
        version = sealed.get("v")
        if version == 0:
            return str(sealed["p"])
        if version == 1:  # before key ids: try each key
            candidates = list(self._aeads.values())
        elif version == 2:
            aead = self._aeads.get(str(sealed.get("k")))
            candidates = [aead] if aead is not None else []
        else:
            candidates = []
        if not candidates:
            raise SealedSecretError(
                "a sealed secret needs a key that is not configured (MESHGATE_WEBHOOK_SECRET_KEYS)"
            )
        for aead in candidates:
            try:
                plain = aead.decrypt(
                    base64.b64decode(sealed["n"]), base64.b64decode(sealed["c"]), context.encode()
                )
            except (InvalidTag, KeyError, ValueError):
                continue
            return plain.decode()
        raise SealedSecretError("a sealed secret does not open with the configured keys")

    def reseal(self, sealed: dict[str, Any], *, context: str) -> dict[str, Any]:
        """The value sealed under the primary key (as it is if it already is)."""
        if self.sealed_by(sealed) == self._primary:
            return sealed
        return self.seal(self.open(sealed, context=context), context=context)
