"""WebhookService and delivery through the real server and a real HTTP receiver.

Every delivery is checked by the receiver with two Standard Webhooks verifiers
(tests/support/webhooks.py: one written from the specification, and the reference
`standardwebhooks` package). The test settings allow-list 127.0.0.1 and
shrink the retry schedule to 5 attempts within about a second.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from meshgate.v1 import options_pb2
from meshgate.v1 import task_service_pb2 as task_pb
from meshgate.v1 import vector_service_pb2 as vec_pb
from meshgate.v1 import webhook_service_pb2 as pb
from meshgate.v1.namespace_service_pb2 import Namespace

from server.app import RunningServer
from server.backends import Backends
from server.logs import GuardedJsonFormatter
from server.settings import Settings
from storage.backends.work_queue import WorkQueue
from storage.webhooks.targets import REFUSED_TARGET
from tests.support.clients import rpc_error
from tests.support.namespace_clients import Hooks, Tasks, doc
from tests.support.pki import Pki
from tests.support.processes import free_port
from tests.support.servers import serving
from tests.support.tenants import MakeTenant, Tenant, create_tenant
from tests.support.waiting import eventually
from tests.support.webhooks import (
    WEBHOOK_TEST_SCHEDULE,
    Receiver,
    check_signature,
    new_endpoint_path,
)

ATTEMPTS = len(WEBHOOK_TEST_SCHEDULE) + 1


async def setup(
    tenant: Tenant, receiver: Receiver, event_types: Sequence[str] = ("*",)
) -> tuple[Namespace, Hooks, Tasks, str, pb.CreateWebhookResponse]:
    """A namespace with a webhook on a new receiver endpoint, and its callers."""
    ns = await tenant.namespace()
    hooks, tasks = Hooks(tenant, ns.name), Tasks(tenant, ns.name)
    where = new_endpoint_path()
    created = await hooks.create(receiver.url(where), event_types)
    receiver.endpoint(where, created.secret)
    return ns, hooks, tasks, where, created


async def test_events_are_signed_and_seen_exactly_once(tenant: Tenant, receiver: Receiver) -> None:
    ns, hooks, tasks, where, created = await setup(tenant, receiver)
    submitted = [await tasks.submit([doc(f"d{i}")]) for i in range(3)]
    await eventually(lambda: receiver.delivered_at_least(where, 3), timeout_s=10)
    delivered = receiver.delivered(where)
    assert all(r.valid for r in receiver.requests(where))
    assert {r.payload["data"]["task_id"] for r in delivered.values()} == {
        t.task_id for t in submitted
    }
    for request in delivered.values():
        assert request.payload["type"] == "task.completed"
        assert request.payload["data"]["namespace_id"] == ns.namespace_id
        assert request.payload["data"]["state"] == "completed"
        assert request.headers["user-agent"].startswith("meshgate-webhooks/")
        assert abs(request.timestamp - time.time()) < 30

    async def recorded() -> bool:  # the receiver answers before the sender records the answer
        found = await hooks.deliveries(created.webhook.webhook_id)
        return all(d.status == pb.DELIVERY_STATUS_SUCCEEDED for d in found)

    await eventually(recorded, timeout_s=10)
    deliveries = await hooks.deliveries(created.webhook.webhook_id)
    assert len(deliveries) == 3
    assert {d.event_id for d in deliveries} == set(delivered)  # webhook-id is the event id
    assert all(
        d.status == pb.DELIVERY_STATUS_SUCCEEDED
        and d.attempt_count == 1
        and d.last_response_code == 200
        for d in deliveries
    )
    assert [d.delivery_id for d in deliveries] == sorted(
        (d.delivery_id for d in deliveries), reverse=True
    )  # newest first


async def test_event_types_select_what_a_webhook_receives(
    tenant: Tenant, receiver: Receiver
) -> None:
    ns = await tenant.namespace()
    hooks, tasks = Hooks(tenant, ns.name), Tasks(tenant, ns.name)
    failed_path, completed_path = new_endpoint_path(), new_endpoint_path()
    failed_hook = await hooks.create(receiver.url(failed_path), ["task.failed"])
    completed_hook = await hooks.create(receiver.url(completed_path), ["task.completed"])
    receiver.endpoint(failed_path, failed_hook.secret)
    receiver.endpoint(completed_path, completed_hook.secret)
    ok = await tasks.submit([doc("a")])
    # points, but the namespace has no vector store: the task fails before writing anything
    bad = await tasks.submit([doc("b")], [vec_pb.Point(id="p", vector=[1.0, 0.0])])
    final = await tasks.final(bad.task_id)
    assert final.state == task_pb.TASK_STATE_FAILED
    assert final.error.code == "FAILED_PRECONDITION" and "vector store" in final.error.message
    assert final.items_done == 0
    await tasks.final(ok.task_id)
    await eventually(lambda: receiver.delivered_at_least(failed_path, 1))
    await eventually(lambda: receiver.delivered_at_least(completed_path, 1))
    (failed_event,) = receiver.delivered(failed_path).values()
    (completed_event,) = receiver.delivered(completed_path).values()
    assert failed_event.payload["type"] == "task.failed"
    assert failed_event.payload["data"]["task_id"] == bad.task_id
    assert failed_event.payload["data"]["error"]["code"] == "FAILED_PRECONDITION"
    assert completed_event.payload["data"]["task_id"] == ok.task_id


async def test_receiver_down_for_several_attempts_then_up(tenant: Tenant) -> None:
    ns = await tenant.namespace()
    hooks, tasks = Hooks(tenant, ns.name), Tasks(tenant, ns.name)
    port = free_port()
    created = await hooks.create(f"http://127.0.0.1:{port}/late")
    task = await tasks.submit([doc("a")])

    async def failed_twice() -> bool:
        found = await hooks.deliveries(created.webhook.webhook_id)
        return bool(found) and found[0].attempt_count >= 2

    await eventually(failed_twice, timeout_s=5, interval_s=0.01)
    late = Receiver(port).start()
    try:
        late.endpoint("/late", created.secret)
        delivery = await hooks.delivery_in(created.webhook.webhook_id, pb.DELIVERY_STATUS_SUCCEEDED)
        assert delivery.attempt_count >= 3
        assert [a.error for a in delivery.attempts[:2]] == ["connection refused"] * 2
        assert delivery.attempts[-1].response_code == 200 and delivery.attempts[-1].error == ""
        (request,) = late.delivered("/late").values()
        assert request.payload["data"]["task_id"] == task.task_id
    finally:
        late.stop()


async def test_410_disables_the_endpoint(
    tenant: Tenant, receiver: Receiver, backends: Backends
) -> None:
    ns, hooks, tasks, where, created = await setup(tenant, receiver)
    webhook_id = created.webhook.webhook_id
    receiver.script(where, 410)
    await tasks.submit([doc("a")])
    delivery = await hooks.delivery_in(webhook_id, pb.DELIVERY_STATUS_FAILED)
    assert delivery.last_response_code == 410 and delivery.attempt_count == 1

    async def disabled() -> bool:  # the attempt is recorded first, then the endpoint disabled
        return not (await hooks.get(webhook_id)).enabled

    await eventually(disabled)
    webhook = await hooks.get(webhook_id)
    assert not webhook.enabled and "410" in webhook.disabled_reason
    # a disabled webhook gets no new deliveries
    later = await tasks.submit([doc("b")])
    await tasks.final(later.task_id)
    await eventually(published(backends, ns.namespace_id, later.task_id))
    assert len(await hooks.deliveries(webhook_id)) == 1
    error = await rpc_error(
        hooks.stub.RetryDelivery(
            pb.RetryDeliveryRequest(delivery_id=delivery.delivery_id), metadata=hooks.md
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "enable" in (
        error.details() or ""
    )
    # enabled again, the failed delivery can be sent on demand
    enabled = await hooks.update(pb.Webhook(webhook_id=webhook_id, enabled=True), "enabled")
    assert enabled.enabled and enabled.disabled_reason == ""
    await hooks.stub.RetryDelivery(
        pb.RetryDeliveryRequest(delivery_id=delivery.delivery_id), metadata=hooks.md
    )
    await hooks.delivery_in(webhook_id, pb.DELIVERY_STATUS_SUCCEEDED)
    assert len(receiver.delivered(where)) == 1


def published(backends: Backends, namespace_id: str, task_id: str) -> Callable[[], Awaitable[bool]]:
    """A predicate: the task's event went through the outbox (its work-queue row is gone)."""

    async def done() -> bool:
        rows = await WorkQueue(mongo=backends.mongo).rows_of(namespace_id)
        return not any(r["ref"] == task_id for r in rows)

    return done


@pytest.fixture
async def alone(settings: Settings, pki: Pki) -> AsyncIterator[tuple[RunningServer, Tenant]]:
    """A server on a database of its own: no other server's workers can make an attempt
    (and count it) on its deliveries. The session's database is shared by every server a
    test starts in this process; one of them made the last attempt in one full run of
    about three, and the session server's count stayed where it was."""
    own = replace(
        settings,
        mongodb_database=f"{settings.mongodb_database}_alone_{secrets.token_hex(3)}",
        metrics_listen="",
    )
    async with serving(own, pki) as (running, backends, channel):
        tenant = await create_tenant(
            backends, channel, environment="development", plan="enterprise"
        )
        yield running, tenant


async def test_exhausted_delivery_is_retried_on_demand(
    alone: tuple[RunningServer, Tenant], receiver: Receiver
) -> None:
    server, tenant = alone
    _ns, hooks, tasks, where, created = await setup(tenant, receiver)
    webhook_id = created.webhook.webhook_id
    receiver.script(where, *([500] * ATTEMPTS))
    exhausted_before = server.work_metrics.deliveries_exhausted
    await tasks.submit([doc("a")])
    delivery = await hooks.delivery_in(webhook_id, pb.DELIVERY_STATUS_EXHAUSTED)
    assert delivery.attempt_count == ATTEMPTS
    assert [a.response_code for a in delivery.attempts] == [500] * ATTEMPTS
    assert delivery.last_error == "HTTP 500"
    requests = receiver.requests(where)
    assert len(requests) == ATTEMPTS and len({r.webhook_id for r in requests}) == 1
    # the schedule's delays (with jitter) lie between the attempts
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(requests)]
    for gap, planned in zip(gaps, WEBHOOK_TEST_SCHEDULE, strict=True):
        assert gap >= planned * 0.8 - 0.02

    async def counted() -> bool:  # the status is stored first, then the attempt counted
        return server.work_metrics.deliveries_exhausted > exhausted_before

    await eventually(counted)
    assert await hooks.deliveries(webhook_id, pb.DELIVERY_STATUS_PENDING) == []
    retried = await hooks.stub.RetryDelivery(
        pb.RetryDeliveryRequest(delivery_id=delivery.delivery_id), metadata=hooks.md
    )
    assert retried.delivery.status == pb.DELIVERY_STATUS_PENDING
    done = await hooks.delivery_in(webhook_id, pb.DELIVERY_STATUS_SUCCEEDED)
    assert done.attempt_count == ATTEMPTS + 1
    assert set(receiver.delivered(where)) == {requests[0].webhook_id}  # the same webhook-id
    # succeeded: nothing more to retry
    error = await rpc_error(
        hooks.stub.RetryDelivery(
            pb.RetryDeliveryRequest(delivery_id=delivery.delivery_id), metadata=hooks.md
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_retry_after_is_honoured(tenant: Tenant, receiver: Receiver) -> None:
    _ns, hooks, tasks, where, created = await setup(tenant, receiver)
    receiver.script(where, (429, {"Retry-After": "1"}), (503, {"Retry-After": "1"}))
    await tasks.submit([doc("a")])
    await hooks.delivery_in(created.webhook.webhook_id, pb.DELIVERY_STATUS_SUCCEEDED)
    first, second, third = receiver.requests(where)
    assert (first.status, second.status, third.status) == (429, 503, 200)
    # the schedule alone would retry after 0.1 s and 0.2 s
    assert second.arrived - first.arrived >= 0.95
    assert third.arrived - second.arrived >= 0.95


async def test_rotation_signs_with_old_and_new_secret_during_grace(
    tenant: Tenant, receiver: Receiver
) -> None:
    _ns, hooks, tasks, where, created = await setup(tenant, receiver)
    old = created.secret
    rotated = await hooks.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(
            webhook_id=created.webhook.webhook_id, grace_period=Duration(seconds=600)
        ),
        metadata=hooks.md,
    )
    new = rotated.secret
    assert new.startswith("whsec_") and new != old
    assert rotated.webhook.secret_rotate_time.seconds > 0
    assert rotated.previous_secret_expire_time.seconds - time.time() > 590
    receiver.endpoint(where, new)
    await tasks.submit([doc("a")])
    await eventually(lambda: receiver.delivered_at_least(where, 1))
    (request,) = receiver.delivered(where).values()
    assert len(request.signatures) == 2
    assert check_signature([old], request.headers, request.body).valid
    assert check_signature([new], request.headers, request.body).valid
    # no grace: only the newest secret signs
    newest = await hooks.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(webhook_id=created.webhook.webhook_id), metadata=hooks.md
    )
    receiver.endpoint(where, newest.secret)
    await tasks.submit([doc("b")])
    await eventually(lambda: receiver.delivered_at_least(where, 2))
    last = receiver.requests(where)[-1]
    assert len(last.signatures) == 1
    assert check_signature([newest.secret], last.headers, last.body).valid
    assert check_signature([old, new], last.headers, last.body).refused
    error = await rpc_error(
        hooks.stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(
                webhook_id=created.webhook.webhook_id, grace_period=Duration(seconds=8 * 86400)
            ),
            metadata=hooks.md,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_crud_and_secrets_shown_once(
    tenant: Tenant, receiver: Receiver, backends: Backends
) -> None:
    ns = await tenant.namespace()
    hooks = Hooks(tenant, ns.name)
    created = await hooks.create(receiver.url("/crud"), ["task.failed", "task.completed"], "orders")
    secret = created.secret
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    webhook = created.webhook
    assert webhook.webhook_id.startswith("wh_") and webhook.enabled
    assert list(webhook.event_types) == ["task.completed", "task.failed"]
    got = await hooks.get(webhook.webhook_id)
    listed = await hooks.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=hooks.md)
    updated = await hooks.update(
        pb.Webhook(
            webhook_id=webhook.webhook_id, event_types=["*"], description="all", enabled=False
        ),
        "event_types",
        "description",
        "enabled",
    )
    assert list(updated.event_types) == ["*"] and updated.description == "all"
    assert not updated.enabled and updated.disabled_reason == ""
    deliveries = await hooks.stub.ListDeliveries(
        pb.ListDeliveriesRequest(webhook_id=webhook.webhook_id), metadata=hooks.md
    )
    deleted = await hooks.stub.DeleteWebhook(
        pb.DeleteWebhookRequest(webhook_id=webhook.webhook_id), metadata=hooks.md
    )
    raw_secret = secret[6:].encode()
    for response in (got, listed, updated, deliveries, deleted):
        serialized = response.SerializeToString()
        assert raw_secret not in serialized and b"whsec_" not in serialized
    # at rest the secret is sealed
    raw = await backends.mongo.database["webhooks"].find_one({"webhook_id": webhook.webhook_id})
    assert raw is None  # deleted
    other = await hooks.create(receiver.url("/crud2"))
    stored = await backends.mongo.database["webhooks"].find_one(
        {"webhook_id": other.webhook.webhook_id}
    )
    assert stored is not None and other.secret[6:] not in str(stored)
    error = await rpc_error(
        hooks.stub.GetWebhook(
            pb.GetWebhookRequest(webhook_id=webhook.webhook_id), metadata=hooks.md
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.2/hook", REFUSED_TARGET),  # loopback, not on the allow-list
        ("https://127.2/hook", REFUSED_TARGET),  # the same in short form
        ("https://2130706434/hook", REFUSED_TARGET),  # and as one decimal number
        ("https://0x7f000002/hook", REFUSED_TARGET),
        ("https://[::1]/hook", REFUSED_TARGET),
        ("https://[::ffff:10.0.0.1]/hook", REFUSED_TARGET),
        ("https://10.1.2.3/hook", REFUSED_TARGET),
        ("https://192.168.0.1/hook", REFUSED_TARGET),
        ("https://169.254.169.254/latest/meta-data/", REFUSED_TARGET),
        ("https://[fe80::1]/hook", REFUSED_TARGET),
        ("https://0.0.0.0/hook", REFUSED_TARGET),
        ("https://224.0.0.1/hook", REFUSED_TARGET),
        ("https://100.64.0.1/hook", REFUSED_TARGET),
        ("https://does-not-exist.invalid/hook", REFUSED_TARGET),  # a name that does not resolve
        ("http://93.184.216.34/hook", REFUSED_TARGET),
        ("ftp://93.184.216.34/hook", "https://"),
        ("https://user:pw@93.184.216.34/hook", "user info"),
        ("https://93.184.216.34/hook#x", "fragment"),
        ("https://93.184.216.34:0/", "port"),
        ("", "required"),
        ("https://" + "a" * 2048 + ".example/", "2048"),
    ],
)
async def test_ssrf_and_bad_urls_are_refused(tenant: Tenant, url: str, message: str) -> None:
    ns = await tenant.namespace()
    hooks = Hooks(tenant, ns.name)
    error = await rpc_error(hooks.create(url))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, url
    assert message in (error.details() or ""), error.details()
    listed = await hooks.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=hooks.md)
    assert list(listed.webhooks) == []


async def test_updates_are_vetted_too(tenant: Tenant, receiver: Receiver) -> None:
    ns = await tenant.namespace()
    hooks = Hooks(tenant, ns.name)
    created = await hooks.create(receiver.url("/vetted"))
    webhook_id = created.webhook.webhook_id
    for url in ("https://10.0.0.1/", "http://93.184.216.34/", "https://169.254.169.254/"):
        error = await rpc_error(hooks.update(pb.Webhook(webhook_id=webhook_id, url=url), "url"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await hooks.get(webhook_id)).url == receiver.url("/vetted")
    moved = await hooks.update(
        pb.Webhook(webhook_id=webhook_id, url="http://127.0.0.1:9/moved"), "url"
    )
    assert moved.url == "http://127.0.0.1:9/moved"


async def test_bad_input_is_invalid_argument(tenant: Tenant, receiver: Receiver) -> None:
    ns = await tenant.namespace()
    hooks = Hooks(tenant, ns.name)
    url = receiver.url("/bad")
    for event_types, message in (
        ([], "at least one"),
        (["task.done"], "unknown event type"),
        (["*", "nope"], "unknown event type"),
        (["task.completed"] * 11, "at most 10"),
    ):
        error = await rpc_error(hooks.create(url, event_types))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (error.details() or "")
    error = await rpc_error(hooks.create(url, ["*"], "x" * 257))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await hooks.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=hooks.md)
    assert list(listed.webhooks) == []
    created = await hooks.create(url, ["task.completed", "task.completed"])
    assert list(created.webhook.event_types) == ["task.completed"]
    webhook_id = created.webhook.webhook_id
    calls: list[Awaitable[object]] = [
        hooks.update(pb.Webhook(webhook_id=webhook_id)),
        hooks.update(pb.Webhook(webhook_id=webhook_id, url="x"), "secret"),
        hooks.update(pb.Webhook(webhook_id=webhook_id), "event_types"),
        hooks.stub.ListDeliveries(
            pb.ListDeliveriesRequest(
                webhook_id=webhook_id, statuses=[pb.DELIVERY_STATUS_UNSPECIFIED]
            ),
            metadata=hooks.md,
        ),
        hooks.stub.ListDeliveries(
            pb.ListDeliveriesRequest(webhook_id=webhook_id, page_size=201), metadata=hooks.md
        ),
        hooks.stub.ListDeliveries(
            pb.ListDeliveriesRequest(webhook_id=webhook_id, page_token="garbage"),
            metadata=hooks.md,
        ),
        hooks.stub.ListWebhooks(pb.ListWebhooksRequest(page_size=-1), metadata=hooks.md),
        hooks.stub.GetWebhook(pb.GetWebhookRequest(webhook_id="wh_bad"), metadata=hooks.md),
        hooks.stub.RetryDelivery(pb.RetryDeliveryRequest(delivery_id="x"), metadata=hooks.md),
    ]
    for call in calls:
        assert (await rpc_error(call)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list((await hooks.get(webhook_id)).event_types) == ["task.completed"]


async def test_webhooks_are_isolated_between_namespaces_and_organizations(
    tenant: Tenant, make_tenant: MakeTenant, receiver: Receiver
) -> None:
    other_org = await make_tenant()
    ns1, hooks1, tasks1, path1, hook1 = await setup(tenant, receiver)
    ns2, hooks2, tasks2, path2, _hook2 = await setup(tenant, receiver)
    ns3, hooks3, tasks3, path3, _hook3 = await setup(other_org, receiver)
    ids = {
        path1: {(await tasks1.submit([doc("same-id")])).task_id for _ in range(2)},
        path2: {(await tasks2.submit([doc("same-id")])).task_id},
        path3: {(await tasks3.submit([doc("same-id")])).task_id},
    }
    for where, expected in ids.items():
        await eventually(partial(receiver.delivered_at_least, where, len(expected)))
    for where, namespace in ((path1, ns1), (path2, ns2), (path3, ns3)):
        delivered = receiver.delivered(where).values()
        assert {r.payload["data"]["task_id"] for r in delivered} == ids[where]
        assert {r.payload["data"]["namespace_id"] for r in delivered} == {namespace.namespace_id}
    # another namespace of the same organization, and another organization: NOT_FOUND
    webhook_id = hook1.webhook.webhook_id
    (delivery,) = (await hooks1.deliveries(webhook_id))[:1]
    for hooks in (hooks2, hooks3):
        for call in (
            hooks.stub.GetWebhook(pb.GetWebhookRequest(webhook_id=webhook_id), metadata=hooks.md),
            hooks.stub.ListDeliveries(
                pb.ListDeliveriesRequest(webhook_id=webhook_id), metadata=hooks.md
            ),
            hooks.stub.RetryDelivery(
                pb.RetryDeliveryRequest(delivery_id=delivery.delivery_id), metadata=hooks.md
            ),
            hooks.stub.DeleteWebhook(
                pb.DeleteWebhookRequest(webhook_id=webhook_id), metadata=hooks.md
            ),
            hooks.stub.RotateWebhookSecret(
                pb.RotateWebhookSecretRequest(webhook_id=webhook_id), metadata=hooks.md
            ),
        ):
            assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    # the other organization cannot even name the namespace
    foreign = Hooks(other_org, ns1.name)
    error = await rpc_error(
        foreign.stub.GetWebhook(pb.GetWebhookRequest(webhook_id=webhook_id), metadata=foreign.md)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == "namespace not found"
    assert (await hooks1.get(webhook_id)).enabled  # untouched


async def test_webhook_management_needs_admin(tenant: Tenant, receiver: Receiver) -> None:
    ns = await tenant.namespace()
    writer = await tenant.key(options_pb2.PERMISSION_WRITE, options_pb2.PERMISSION_READ)
    hooks = Hooks(tenant, ns.name, writer.secret)
    error = await rpc_error(hooks.create(receiver.url("/denied")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await rpc_error(hooks.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=hooks.md))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_namespace_holds_at_most_25_webhooks(tenant: Tenant, receiver: Receiver) -> None:
    """Registrations are a structure a caller can make grow: the 26th is refused, and a
    namespace beside it keeps its own 25."""
    full, other = await tenant.namespace(), await tenant.namespace()
    hooks = Hooks(tenant, full.name)
    for i in range(25):
        await hooks.create(receiver.url(f"/cap{i}"))
    error = await rpc_error(hooks.create(receiver.url("/cap25")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "at most 25 webhooks" in (error.details() or "")
    listed = await hooks.stub.ListWebhooks(pb.ListWebhooksRequest(page_size=50), metadata=hooks.md)
    assert len(listed.webhooks) == 25
    await Hooks(tenant, other.name).create(receiver.url("/elsewhere"))


async def test_secrets_never_reach_the_logs(tenant: Tenant, receiver: Receiver) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(GuardedJsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        _ns, hooks, tasks, where, created = await setup(tenant, receiver)
        rotated = await hooks.stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(
                webhook_id=created.webhook.webhook_id, grace_period=Duration(seconds=60)
            ),
            metadata=hooks.md,
        )
        receiver.endpoint(where, rotated.secret)
        receiver.script(where, 500)
        await tasks.submit([doc("a")])
        await eventually(lambda: receiver.delivered_at_least(where, 1))
        logging.getLogger("meshgate.test").info("leak attempt %s", rotated.secret)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    output = stream.getvalue()
    assert '"method":"/meshgate.v1.WebhookService/CreateWebhook"' in output  # we did capture
    for secret in (created.secret, rotated.secret):
        assert secret not in output and secret[6:] not in output
    assert "[redacted]" in output


async def test_each_submitted_task_is_delivered_once_signed_with_its_payload(
    tenant: Tenant, receiver: Receiver
) -> None:
    """Submit -> the receiver gets the task's task.completed event: one request per task,
    accepted by both signature verifiers, carrying that task. (How fast: `make bench`.)"""
    ns, hooks, tasks, where, created = await setup(tenant, receiver, ["task.completed"])
    submitted = [await tasks.submit([doc(f"d{i}")]) for i in range(5)]
    await eventually(lambda: receiver.delivered_at_least(where, 5), timeout_s=10)

    async def recorded() -> bool:  # the receiver answers before the sender records the answer
        found = await hooks.deliveries(created.webhook.webhook_id)
        return all(d.status == pb.DELIVERY_STATUS_SUCCEEDED for d in found)

    await eventually(recorded, timeout_s=10)
    deliveries = await hooks.deliveries(created.webhook.webhook_id)
    assert [(d.status, d.attempt_count) for d in deliveries] == [
        (pb.DELIVERY_STATUS_SUCCEEDED, 1)
    ] * 5  # nothing left to retry: no second request will come
    requests = receiver.requests(where)
    assert len(requests) == 5 and len({r.webhook_id for r in requests}) == 5  # once each
    for request in requests:
        assert request.status == 200
        assert check_signature([created.secret], request.headers, request.body).valid
    by_task = {r.payload["data"]["task_id"]: r for r in requests}
    assert set(by_task) == {t.task_id for t in submitted}
    for task in submitted:
        payload = by_task[task.task_id].payload
        assert payload["type"] == "task.completed"
        assert payload["data"]["namespace_id"] == ns.namespace_id
        assert payload["data"]["state"] == "completed"
        assert (payload["data"]["items_total"], payload["data"]["items_done"]) == (1, 1)


async def test_a_secret_that_does_not_open_fails_the_delivery(
    tenant: Tenant, receiver: Receiver, backends: Backends
) -> None:
    """Sealed with another key (or tampered with): failed at once, nothing sent, no retries."""
    _ns, hooks, tasks, where, created = await setup(tenant, receiver)
    await backends.mongo.database["webhooks"].update_one(
        {"webhook_id": created.webhook.webhook_id},
        {"$set": {"secrets.0.sealed.c": base64.b64encode(b"not the sealed secret").decode()}},
    )
    await tasks.submit([doc("a")])
    delivery = await hooks.delivery_in(created.webhook.webhook_id, pb.DELIVERY_STATUS_FAILED)
    assert "cannot be read" in delivery.last_error and delivery.attempt_count == 0
    assert receiver.requests(where) == []
