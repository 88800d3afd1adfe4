"""Identifier forms: minted ids match their patterns; client-chosen ids are checked once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage.core.errors import InvalidArgumentError
from storage.core.ids import (
    KEY_ID_RE,
    NAMESPACE_ID_RE,
    ORGANIZATION_ID_RE,
    TIME_ORDERED_BODY,
    check_client_id,
    new_key_id,
    new_namespace_id,
    new_organization_id,
    prefixed_id_re,
    time_ordered_id,
)


def test_minted_ids_match_their_patterns() -> None:
    assert ORGANIZATION_ID_RE.match(new_organization_id())
    assert NAMESPACE_ID_RE.match(new_namespace_id())
    assert KEY_ID_RE.match(new_key_id())
    assert not KEY_ID_RE.match(new_namespace_id())
    task_id = time_ordered_id("task", datetime.now(UTC))
    assert prefixed_id_re("task", length=TIME_ORDERED_BODY).match(task_id)


@pytest.mark.parametrize("value", ["a", "doc_1", "A.b:c-d_e", "x" * 128])
def test_client_ids_accepted(value: str) -> None:
    assert check_client_id(value, what="document_id") == value


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a/b", "$where", "é"])
def test_client_ids_refused_with_the_callers_name(value: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_client_id(value, what="point ids")
    assert info.value.message == "point ids must be 1-128 characters of A-Z a-z 0-9 _ . : -"
