"""Page tokens as a codec: bound, authenticated, expiring, with rotatable keys.

The attacker's view through the real server is tests/interceptors/test_page_tokens.py;
here every way a token can be wrong is tried against the codec alone, with an injected
clock for expiry.
"""

from __future__ import annotations

import base64
import json

import pytest

from storage.core.page_tokens import PAGE_TOKEN_TTL_S, PageTokenError, PageTokens

K1, K2 = b"1" * 32, b"2" * 32
HERE, ELSEWHERE = b"h" * 32, b"e" * 32
CURSOR = "eyJ2IjoxLCJrIjoiZG9jIiwiYSI6Im9yZGVyLTEifQ"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_opens_with_its_binding_only() -> None:
    tokens = PageTokens([K1])
    token = tokens.seal(CURSOR, binding=HERE)
    assert CURSOR not in token
    assert tokens.open(token, binding=HERE) == CURSOR
    with pytest.raises(PageTokenError, match="does not belong to this request"):
        tokens.open(token, binding=ELSEWHERE)


def test_empty_means_first_page_and_last_page() -> None:
    tokens = PageTokens([K1])
    assert tokens.seal("", binding=HERE) == ""
    assert tokens.open("", binding=HERE) == ""


def test_every_altered_character_is_refused() -> None:
    tokens = PageTokens([K1])
    token = tokens.seal(CURSOR, binding=HERE)
    for at in range(len(token)):
        changed = "A" if token[at] != "A" else "B"
        altered = token[:at] + changed + token[at + 1 :]
        try:
            opened = tokens.open(altered, binding=HERE)
        except PageTokenError:
            continue
        # the last character may carry only padding bits that decoding ignores
        assert at == len(token) - 1 and opened == CURSOR


@pytest.mark.parametrize(
    "forged",
    [
        base64.urlsafe_b64encode(json.dumps({"v": 1, "k": "doc", "a": "order-1"}).encode())
        .decode()
        .rstrip("="),
        CURSOR,
        "garbage!",
        "é" * 10,
        "A" * 4000,
        base64.urlsafe_b64encode(b"\x01" + b"\x00" * 60).decode(),
    ],
)
def test_hand_made_tokens_are_refused(forged: str) -> None:
    with pytest.raises(PageTokenError, match="does not belong to this request"):
        PageTokens([K1]).open(forged, binding=HERE)


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = PageTokens([K2]).seal(CURSOR, binding=HERE)
    with pytest.raises(PageTokenError):
        PageTokens([K1]).open(token, binding=HERE)


def test_a_token_expires_after_an_hour() -> None:
    clock = Clock()
    tokens = PageTokens([K1], now=clock)
    token = tokens.seal(CURSOR, binding=HERE)
    clock.now += PAGE_TOKEN_TTL_S - 1
    assert tokens.open(token, binding=HERE) == CURSOR
    clock.now += 2
    with pytest.raises(PageTokenError, match="has expired"):
        tokens.open(token, binding=HERE)


def test_rotation_old_key_verifies_until_removed() -> None:
    old = PageTokens([K1]).seal(CURSOR, binding=HERE)
    rotated = PageTokens([K2, K1])  # K2 signs now, K1 still verifies
    assert rotated.open(old, binding=HERE) == CURSOR
    new = rotated.seal(CURSOR, binding=HERE)
    assert PageTokens([K2]).open(new, binding=HERE) == CURSOR
    with pytest.raises(PageTokenError):
        PageTokens([K2]).open(old, binding=HERE)  # K1 removed


def test_keys_must_be_long_and_stay_out_of_reprs() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        PageTokens([b"short"])
    with pytest.raises(ValueError, match="at least one key"):
        PageTokens([])
    assert "1111" not in repr(PageTokens([K1]))
