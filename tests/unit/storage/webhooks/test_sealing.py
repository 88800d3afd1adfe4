"""SecretBox: key ids, opening with older keys, values sealed before key ids existed."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.webhooks.sealing import SealedSecretError, SecretBox

K1, K2 = b"1" * 32, b"2" * 32


def test_the_primary_seals_and_older_keys_still_open() -> None:
    old = SecretBox([("k1", K1)]).seal("whsec_a", context="ns/wh")
    assert old["k"] == "k1"
    rotated = SecretBox([("k2", K2), ("k1", K1)])
    assert rotated.open(old, context="ns/wh") == "whsec_a"
    moved = rotated.reseal(old, context="ns/wh")
    assert moved["k"] == "k2" and rotated.reseal(moved, context="ns/wh") is moved
    assert SecretBox([("k2", K2)]).open(moved, context="ns/wh") == "whsec_a"
    with pytest.raises(SealedSecretError):  # k1 is gone
        SecretBox([("k2", K2)]).open(old, context="ns/wh")
    with pytest.raises(SealedSecretError):  # bound to its record
        rotated.open(moved, context="ns/other")


def test_a_value_naming_a_key_id_it_was_not_sealed_with_does_not_open() -> None:
    sealed = SecretBox([("k1", K1)]).seal("whsec_a", context="c")
    forged = {**sealed, "k": "k2"}
    with pytest.raises(SealedSecretError):
        SecretBox([("k2", K2), ("k1", K1)]).open(forged, context="c")


def test_values_sealed_before_key_ids_open_with_any_configured_key() -> None:
    nonce = os.urandom(12)
    legacy = {
        "v": 1,
        "n": base64.b64encode(nonce).decode(),
        "c": base64.b64encode(AESGCM(K1).encrypt(nonce, b"whsec_old", b"c")).decode(),
    }
    box = SecretBox([("k2", K2), ("default", K1)])
    assert box.sealed_by(legacy) is None
    assert box.open(legacy, context="c") == "whsec_old"
    assert box.reseal(legacy, context="c")["k"] == "k2"
    assert SecretBox(K1).open(legacy, context="c") == "whsec_old"
