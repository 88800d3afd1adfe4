"""Identifier forms: minted ids match their patterns; client-chosen ids are checked once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage.core.errors import InvalidArgumentError
from storage.core.ids import (
    BASE62,
    KEY_ID_RE,
    NAMESPACE_ID_RE,
    ORGANIZATION_ID_RE,
    TIME_ORDERED_BODY,
    check_client_id,
    new_key_id,
    new_namespace_id,
    new_organization_id,
    prefixed_id_re,
    random_base62,
    time_ordered_id,
)


def test_minted_ids_match_their_patterns() -> None:
    assert ORGANIZATION_ID_RE.match(new_organization_id())
    assert NAMESPACE_ID_RE.match(new_namespace_id())
    assert KEY_ID_RE.match(new_key_id())
    assert not KEY_ID_RE.match(new_namespace_id())
    task_id = time_ordered_id("task", datetime.now(UTC))
    assert prefixed_id_re("task", length=TIME_ORDERED_BODY).match(task_id)


def test_random_base62_uses_every_character_in_every_position() -> None:
    """One random number per id, written in base62: each position, the first included,
    ranges over the whole alphabet (a short draw would pin the leading characters)."""
    ids = [random_base62(20) for _ in range(3000)]
    assert all(len(i) == 20 and set(i) <= set(BASE62) for i in ids)
    for position in (0, 10, 19):
        assert len({i[position] for i in ids}) == len(BASE62)
    assert len(set(ids)) == len(ids)
    assert {len(random_base62(n)) for n in (1, 8, 12)} == {1, 8, 12}


@pytest.mark.parametrize("value", ["a", "doc_1", "A.b:c-d_e", "x" * 128])
def test_client_ids_accepted(value: str) -> None:
    assert check_client_id(value, what="document_id") == value


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a/b", "$where", "é"])
def test_client_ids_refused_with_the_callers_name(value: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_client_id(value, what="point ids")
    assert info.value.message == "point ids must be 1-128 characters of A-Z a-z 0-9 _ . : -"
