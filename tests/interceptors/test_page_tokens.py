"""Page tokens from the attacker's side: replayed in another namespace, another
organization, another method or with another query; altered, hand-made, expired; and
across a key rotation. Each is INVALID_ARGUMENT before any store sees a cursor."""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from meshgate.v1 import (
    audit_service_pb2,
    document_service_pb2,
    key_service_pb2,
    namespace_service_pb2,
    task_service_pb2,
    webhook_service_pb2,
)

from calls.policy import Access, Policy
from interceptors.chain import SecurityChain
from interceptors.errors import ErrorMapper
from interceptors.page_tokens import PageTokenBinding
from server.app import RunningServer, create_server
from server.backends import Backends
from server.policies import build_policy_table
from server.registry import descriptors
from server.settings import Secret, Settings
from storage.core.page_tokens import PAGE_TOKEN_TTL_S, PageTokens
from tests.support.clients import auth, client_credentials, raw_unary, rpc_error
from tests.support.namespace_clients import Docs, doc
from tests.support.pki import Pki
from tests.support.tenants import MakeTenant, Tenant

LIST_DOCS = "/meshgate.v1.DocumentService/ListDocuments"
ELSEWHERE = "page_token does not belong to this request"
# the format page tokens had before they were sealed: accepted anywhere, by anyone
HAND_MADE = (
    base64.urlsafe_b64encode(json.dumps({"v": 1, "k": "doc", "a": "a"}).encode())
    .decode()
    .rstrip("=")
)

# every List method, the request it takes, and whether it acts in a namespace
LISTS: dict[str, tuple[Callable[[str], Message], bool]] = {
    "/meshgate.v1.KeyService/ListKeys": (
        lambda t: key_service_pb2.ListKeysRequest(page_token=t),
        False,
    ),
    "/meshgate.v1.NamespaceService/ListNamespaces": (
        lambda t: namespace_service_pb2.ListNamespacesRequest(page_token=t),
        False,
    ),
    "/meshgate.v1.AuditService/ListAuditEvents": (
        lambda t: audit_service_pb2.ListAuditEventsRequest(page_token=t),
        False,
    ),
    LIST_DOCS: (lambda t: document_service_pb2.ListDocumentsRequest(page_token=t), True),
    "/meshgate.v1.TaskService/ListTasks": (
        lambda t: task_service_pb2.ListTasksRequest(page_token=t),
        True,
    ),
    "/meshgate.v1.WebhookService/ListWebhooks": (
        lambda t: webhook_service_pb2.ListWebhooksRequest(page_token=t),
        True,
    ),
    "/meshgate.v1.WebhookService/ListDeliveries": (
        lambda t: webhook_service_pb2.ListDeliveriesRequest(webhook_id="wh_x", page_token=t),
        True,
    ),
}


async def list_docs(
    tenant: Tenant,
    namespace: str,
    *,
    token: str = "",
    page_size: int = 1,
    filter: dict[str, Any] | None = None,
    channel: grpc.aio.Channel | None = None,
) -> document_service_pb2.ListDocumentsResponse:
    request = document_service_pb2.ListDocumentsRequest(page_size=page_size, page_token=token)
    if filter is not None:
        request.filter.update(filter)
    call = raw_unary(channel or tenant.channel, LIST_DOCS)
    raw = await call(request.SerializeToString(), metadata=auth(tenant.admin, namespace))
    return document_service_pb2.ListDocumentsResponse.FromString(raw)


async def refused(call: Any) -> str:
    error = await rpc_error(call)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return error.details() or ""


async def namespace_with_documents(tenant: Tenant, count: int = 3) -> str:
    """A namespace holding documents a, b, c... (kind: even/odd)."""
    ns = await tenant.namespace()
    docs = Docs(tenant, ns.name)
    for i in range(count):
        await docs.create(doc(chr(ord("a") + i), kind="even" if i % 2 == 0 else "odd"))
    return ns.name


def test_every_list_method_is_paged_and_covered_here() -> None:
    paged = {m for m, p in build_policy_table(descriptors()).items() if p.paged}
    assert paged == set(LISTS)


@pytest.mark.parametrize("method", sorted(LISTS))
async def test_a_hand_made_token_is_refused_by_every_list_method(
    tenant: Tenant, method: str
) -> None:
    build, namespaced = LISTS[method]
    ns = (await tenant.namespace()).name if namespaced else None
    call = raw_unary(tenant.channel, method)
    for token in (HAND_MADE, "garbage!", "A" * 3000):  # 3,000: past the 2,048 characters read
        details = await refused(
            call(build(token).SerializeToString(), metadata=auth(tenant.admin, ns))
        )
        assert details.startswith(ELSEWHERE)


async def test_pages_follow_each_other_and_page_size_may_change(tenant: Tenant) -> None:
    ns = await namespace_with_documents(tenant, 4)
    first = await list_docs(tenant, ns)
    second = await list_docs(tenant, ns, token=first.next_page_token, page_size=2)
    third = await list_docs(tenant, ns, token=second.next_page_token)
    ids = [d.document_id for page in (first, second, third) for d in page.documents]
    assert ids == ["a", "b", "c", "d"] and third.next_page_token == ""


async def test_a_token_replayed_in_another_namespace_is_refused(tenant: Tenant) -> None:
    here, there = await namespace_with_documents(tenant), await namespace_with_documents(tenant)
    token = (await list_docs(tenant, here)).next_page_token
    assert token
    assert (await refused(list_docs(tenant, there, token=token))).startswith(ELSEWHERE)


async def test_a_token_replayed_in_another_organization_is_refused(
    make_tenant: MakeTenant,
) -> None:
    mine, theirs = await make_tenant(), await make_tenant()
    token = (await list_docs(mine, await namespace_with_documents(mine))).next_page_token
    their_ns = await namespace_with_documents(theirs)
    assert (await refused(list_docs(theirs, their_ns, token=token))).startswith(ELSEWHERE)
    # an organization-wide list: ListKeys of another organization
    for _ in range(2):
        await mine.key()
    page = await mine.keys.ListKeys(
        key_service_pb2.ListKeysRequest(page_size=1), metadata=auth(mine.admin)
    )
    assert page.next_page_token
    again = theirs.keys.ListKeys(
        key_service_pb2.ListKeysRequest(page_token=page.next_page_token),
        metadata=auth(theirs.admin),
    )
    assert (await refused(again)).startswith(ELSEWHERE)


async def test_a_token_used_with_another_query_or_method_is_refused(tenant: Tenant) -> None:
    ns = await namespace_with_documents(tenant, 5)
    token = (await list_docs(tenant, ns, filter={"kind": "even"})).next_page_token
    assert token
    assert [
        d.document_id
        for d in (await list_docs(tenant, ns, token=token, filter={"kind": "even"})).documents
    ] == ["c"]
    for other in ({"kind": "odd"}, None):
        details = await refused(list_docs(tenant, ns, token=token, filter=other))
        assert details.startswith(ELSEWHERE)
    tasks = raw_unary(tenant.channel, "/meshgate.v1.TaskService/ListTasks")
    request = task_service_pb2.ListTasksRequest(page_token=token)
    details = await refused(tasks(request.SerializeToString(), metadata=auth(tenant.admin, ns)))
    assert details.startswith(ELSEWHERE)


async def test_an_altered_token_is_refused(tenant: Tenant) -> None:
    ns = await namespace_with_documents(tenant)
    token = (await list_docs(tenant, ns)).next_page_token
    middle = len(token) // 2
    altered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    assert (await refused(list_docs(tenant, ns, token=altered))).startswith(ELSEWHERE)


async def _other_server(settings: Settings, backends: Backends, keys: str | None) -> RunningServer:
    return await create_server(
        replace(
            settings,
            page_token_keys=Secret(keys) if keys else None,
            metrics_listen=None,
            task_workers=0,
            webhook_workers=0,
        ),
        backends,
        address="127.0.0.1:0",
    )


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def test_replicas_share_the_default_key(
    settings: Settings, backends: Backends, pki: Pki, tenant: Tenant
) -> None:
    """Without MESHGATE_PAGE_TOKEN_KEYS every replica uses the one key kept in MongoDB: a
    token from one replica opens on another."""
    ns = await namespace_with_documents(tenant)
    token = (await list_docs(tenant, ns)).next_page_token
    other = await _other_server(settings, backends, None)
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{other.port}", client_credentials(pki)
        ) as channel:
            page = await list_docs(tenant, ns, token=token, channel=channel)
        assert [d.document_id for d in page.documents] == ["b"]
    finally:
        await other.stop(0)


async def test_rotation_old_key_verifies_until_it_is_removed(
    settings: Settings, backends: Backends, pki: Pki, tenant: Tenant
) -> None:
    ns = await namespace_with_documents(tenant)
    old, new = _key(), _key()
    servers = {
        name: await _other_server(settings, backends, keys)
        for name, keys in (("old", old), ("rotated", f"{new},{old}"), ("new", new))
    }
    try:
        channels = {
            name: grpc.aio.secure_channel(f"localhost:{s.port}", client_credentials(pki))
            for name, s in servers.items()
        }
        token = (await list_docs(tenant, ns, channel=channels["old"])).next_page_token
        page = await list_docs(tenant, ns, token=token, channel=channels["rotated"])
        assert [d.document_id for d in page.documents] == ["b"]
        # the rotated replica signs with the new key, which the new one verifies
        newer = await list_docs(tenant, ns, channel=channels["rotated"])
        page = await list_docs(tenant, ns, token=newer.next_page_token, channel=channels["new"])
        assert [d.document_id for d in page.documents] == ["b"]
        # the old key removed: its tokens no longer open
        details = await refused(list_docs(tenant, ns, token=token, channel=channels["new"]))
        assert details.startswith(ELSEWHERE)
        for channel in channels.values():
            await channel.close()
    finally:
        for running in servers.values():
            await running.stop(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked_list() -> AsyncIterator[tuple[grpc.aio.Channel, Clock]]:
    """A chain with page tokens on an injected clock, in front of a List method that
    pages through ids a..e by cursor."""
    clock = Clock()
    method = "/test.Pages/ListDocuments"

    async def list_documents(
        request: document_service_pb2.ListDocumentsRequest, context: Any
    ) -> document_service_pb2.ListDocumentsResponse:
        after = request.page_token  # the cursor, opened by the chain
        following = [i for i in "abcde" if i > after][:1]
        return document_service_pb2.ListDocumentsResponse(
            documents=[document_service_pb2.Document(document_id=i) for i in following],
            next_page_token=following[0] if following and following[0] < "e" else "",
        )

    chain = SecurityChain(
        policies={method: Policy(access=Access.PUBLIC, paged=True)},
        errors=ErrorMapper(logger=logging.getLogger("test.errors")),
        steps=(),
        observers=(),
        logger=logging.getLogger("test"),
        page_tokens=PageTokenBinding(tokens=PageTokens([b"k" * 32], now=clock)),
    )
    server = grpc.aio.server(interceptors=(chain,))
    handler = grpc.unary_unary_rpc_method_handler(
        list_documents,
        request_deserializer=document_service_pb2.ListDocumentsRequest.FromString,
        response_serializer=document_service_pb2.ListDocumentsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Pages", {"ListDocuments": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, clock
    finally:
        await server.stop(None)


async def test_an_expired_token_is_refused(
    clocked_list: tuple[grpc.aio.Channel, Clock],
) -> None:
    channel, clock = clocked_list
    call = raw_unary(channel, "/test.Pages/ListDocuments")

    async def page(token: str) -> document_service_pb2.ListDocumentsResponse:
        request = document_service_pb2.ListDocumentsRequest(page_token=token)
        return document_service_pb2.ListDocumentsResponse.FromString(
            await call(request.SerializeToString())
        )

    first = await page("")
    assert first.next_page_token and first.next_page_token != "a"  # sealed, not the cursor
    clock.now += PAGE_TOKEN_TTL_S - 1
    assert [d.document_id for d in (await page(first.next_page_token)).documents] == ["b"]
    clock.now += 2
    details = await refused(page(first.next_page_token))
    assert details == "page_token has expired; list again from the first page"
