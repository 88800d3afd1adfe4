"""The document store over the wire, in a database no server works on; the one document
check the API and a restore run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshgate.v1 import document_service_pb2 as doc_pb

from services.convert import dict_to_struct
from storage.backends.mongo import MongoStore
from storage.core.errors import InvalidArgumentError
from storage.data.documents import MAX_DOCUMENT_BYTES, MAX_VALUES, DocumentStore, check_document
from tests.support.tenants import random_scope

LEASE = timedelta(seconds=30)


async def test_ingest_writes_once_per_writer(quiet_mongo: MongoStore) -> None:
    documents = DocumentStore(mongo=quiet_mongo)
    s = random_scope()
    for _ in range(3):  # a task replayed after a crash
        await documents.ingest(s, writer="task_a", document_id="d", body={"v": 1}, metadata={})
    assert (await documents.get(s, "d")).revision == 1
    await documents.ingest(s, writer="task_b", document_id="d", body={"v": 2}, metadata={})
    got = await documents.get(s, "d")
    assert got.revision == 2 and got.body == {"v": 2}


# one-, two-, three- and four-byte characters and a control character; field names the
# check takes (no `$`, `.` or NUL)
TEXT = st.text(alphabet="ab é€😀\x01", max_size=300)
NAMES = st.text(alphabet="ab é€😀\x01", min_size=1, max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner),
    max_leaves=12,
)
FLAT = st.dictionaries(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    st.none() | st.booleans() | st.floats(-1e9, 1e9) | TEXT,
    max_size=5,
)


@settings(max_examples=50, deadline=None)
@given(
    document_id=st.sampled_from(["", "d", "x" * 128]),
    body=st.dictionaries(NAMES, JSON_VALUES),
    metadata=FLAT,
)
def test_the_document_check_measures_what_the_api_message_measures(
    document_id: str, body: dict[str, Any], metadata: dict[str, Any]
) -> None:
    """A restore holds a document to the API's size by the API's measure (the `Document`
    message with its id, body and metadata), computed from the values alone."""
    message = doc_pb.Document(
        document_id=document_id, body=dict_to_struct(body), metadata=dict_to_struct(metadata)
    )
    assert check_document(document_id or None, body, metadata) == message.ByteSize()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": 2**63}, "outside the 64-bit range"),
        ({"n": [float("nan")]}, "not finite"),
        ({"s": "\ud800"}, "not valid Unicode"),
        ({"a\x00b": 1}, "may not contain NUL"),
        ({"xs": [None] * (MAX_VALUES + 1)}, f"more than {MAX_VALUES} values"),
        ({"s": "x" * MAX_DOCUMENT_BYTES}, "larger than 256 KiB"),
    ],
)
def test_what_the_stores_cannot_hold_is_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        check_document("d", body, {})
