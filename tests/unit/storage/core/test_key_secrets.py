"""Key format: mg_<env>_<40 base62>_<6 base62 CRC32>."""

from __future__ import annotations

import re
import zlib

from hypothesis import given
from hypothesis import strategies as st

from storage.core.ids import BASE62
from storage.core.key_secrets import _checksum, digest_secret, mint_secret, parse_secret


def test_minted_secret_shape_and_parse() -> None:
    for env, token in (("development", "dev"), ("staging", "stg"), ("production", "prod")):
        minted = mint_secret(env)
        assert re.fullmatch(rf"mg_{token}_[0-9A-Za-z]{{40}}_[0-9A-Za-z]{{6}}", minted.secret)
        parsed = parse_secret(minted.secret)
        assert parsed is not None and parsed.environment == env
        assert parsed.digest == digest_secret(minted.secret) == minted.digest
        assert minted.secret.startswith(minted.display_prefix)
        assert minted.secret not in repr(minted)


def test_secrets_are_unique() -> None:
    assert len({mint_secret("development").secret for _ in range(1000)}) == 1000


@given(st.integers(min_value=7, max_value=49), st.sampled_from("0123456789ABCDEFabcdefXYZxyz"))
def test_any_single_character_change_is_caught(position: int, replacement: str) -> None:
    secret = mint_secret("production").secret
    position = min(position, len(secret) - 1)
    if secret[position] == replacement or secret[position] == "_":
        return
    tampered = secret[:position] + replacement + secret[position + 1 :]
    assert parse_secret(tampered) is None


@given(st.text(max_size=200))
def test_arbitrary_text_never_parses_by_accident(text: str) -> None:
    assert parse_secret(text) is None


def test_checksum_is_the_crc32_in_six_base62_digits() -> None:
    body = "mg_dev_" + "a" * 40
    value = 0
    for char in _checksum(body):
        value = value * 62 + BASE62.index(char)
    assert value == zlib.crc32(body.encode())
    assert _checksum("") == "000000"  # crc32 of nothing is 0
