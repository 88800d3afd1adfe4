"""Page tokens bound to their call, in-process: a token opens only for the same
organization, environment, namespace, method and query; the page size may change."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
from meshgate.v1 import document_service_pb2

from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.page_tokens import PageTokenBinding
from storage.core.errors import InvalidArgumentError
from storage.core.page_tokens import PageTokens
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.namespaces import Namespace
from storage.tenancy.organizations import Organization
from tests.support.request_path import call_state

LIST = "/meshgate.v1.DocumentService/ListDocuments"
PAGED = Policy(access=Access.API_KEY, permission="read", namespaced=True, paged=True)


def caller(
    *, organization: str = "org_" + "a" * 20, namespace: str = "ns_" + "a" * 20, method: str = LIST
) -> CallState:
    call = call_state(PAGED, method=method)
    key = VerifiedKey(
        "key_" + "k" * 20, organization, "development", frozenset({"read"}), frozenset(), None
    )
    call.principal = Principal(
        key, Organization("internal", organization, "acme", "pro", datetime.now(UTC))
    )
    call.namespace = Namespace(namespace, "internal", "orders", "development", datetime.now(UTC))
    return call


def next_token(
    binding: PageTokenBinding, call: CallState, request: document_service_pb2.ListDocumentsRequest
) -> str:
    """What the chain does around the servicer: open the request's token, seal the next."""
    bound = binding.open(call, request)
    response = document_service_pb2.ListDocumentsResponse(next_page_token="cursor-after-42")
    bound.seal(response)
    return response.next_page_token


def test_a_token_opens_for_the_call_it_was_made_for() -> None:
    binding = PageTokenBinding(tokens=PageTokens((secrets.token_bytes(32),)))
    token = next_token(binding, caller(), document_service_pb2.ListDocumentsRequest(page_size=2))
    assert token and "cursor-after-42" not in token
    again = document_service_pb2.ListDocumentsRequest(page_size=50, page_token=token)
    binding.open(caller(), again)  # another page size: the same query
    assert again.page_token == "cursor-after-42"


@pytest.mark.parametrize(
    ("elsewhere", "filtered"),
    [
        ({"organization": "org_" + "b" * 20}, False),
        ({"namespace": "ns_" + "b" * 20}, False),
        ({"method": "/meshgate.v1.DocumentService/Other"}, False),
        ({}, True),
    ],
    ids=["other organization", "other namespace", "other method", "other query"],
)
def test_a_token_used_elsewhere_is_invalid(elsewhere: dict[str, str], filtered: bool) -> None:
    binding = PageTokenBinding(tokens=PageTokens((secrets.token_bytes(32),)))
    token = next_token(binding, caller(), document_service_pb2.ListDocumentsRequest(page_size=2))
    replayed = document_service_pb2.ListDocumentsRequest(page_token=token)
    if filtered:
        replayed.filter.update({"color": "red"})
    with pytest.raises(InvalidArgumentError):
        binding.open(caller(**elsewhere), replayed)
