"""The chain in-process, on the server's own request path over in-memory stores: each
method's plan comes from its declared policy; the request is decoded only once the call
is admitted; every outcome carries the request id; observers never change an outcome."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from meshgate.v1 import organization_service_pb2

from calls.state import CallState, current_call
from interceptors.chain import SecurityChain, plan_for
from server.policies import build_policy_table
from server.registry import descriptors
from tests.support.request_path import PathOnFakes, call_through

HEALTH = "/grpc.health.v1.Health/Check"
GET_ORG = "/meshgate.v1.OrganizationService/GetOrganization"
GET_NAMESPACE = "/meshgate.v1.NamespaceService/GetNamespace"
CREATE_KEY = "/meshgate.v1.KeyService/CreateKey"
GRANT = "/meshgate.v1.UsageService/GrantCredits"


async def echo(request: Any, context: Any) -> Any:
    return request


def names(parts: tuple[object, ...]) -> list[str]:
    return [type(part).__name__ for part in parts]


def test_each_methods_plan_follows_its_declared_policy() -> None:
    path = PathOnFakes.create().path
    table = build_policy_table(descriptors())
    steps, observers = path.steps, path.observers
    health = table[HEALTH]
    assert names(plan_for(steps, health)) == ["PeerIdentity", "StoreAvailability"]
    assert names(plan_for(observers, health, test="observes")) == ["Telemetry"]
    get_namespace = table[GET_NAMESPACE]  # read, cost 1, not audited
    assert names(plan_for(steps, get_namespace)) == names(steps[:-1])
    assert names(plan_for(observers, get_namespace, test="observes")) == names(observers)
    create_key = table[CREATE_KEY]  # admin, audited, no namespace
    assert "NamespaceScope" not in names(plan_for(steps, create_key))
    assert "AuditTrail" in names(plan_for(steps, create_key))
    grant = table[GRANT]  # internal peer, audited
    assert names(plan_for(steps, grant)) == [
        "PeerIdentity",
        "StoreAvailability",
        "Authorization",
        "AuditTrail",
    ]


async def test_a_step_that_does_not_apply_never_runs() -> None:
    fakes = PathOnFakes.create()
    # a public method: a header no key matches is never looked at, nor counted
    outcome = await call_through(
        fakes.chain(), HEALTH, b"ping", handler=echo, metadata=(("authorization", "Bearer x"),)
    )
    assert outcome.code is grpc.StatusCode.OK and outcome.response == b"ping"
    assert await fakes.usage.flush() == []


async def test_the_request_is_decoded_once_and_only_after_admission() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant()
    decoded: list[bytes] = []

    def decode(raw: bytes) -> organization_service_pb2.GetOrganizationRequest:
        decoded.append(raw)
        return organization_service_pb2.GetOrganizationRequest.FromString(raw)

    chain = fakes.chain()
    refused = await call_through(chain, GET_ORG, b"\x0a\x01x", handler=echo, decode=decode)
    assert refused.code is grpc.StatusCode.UNAUTHENTICATED and decoded == []
    corrupt = await call_through(
        chain, GET_ORG, b"\xff\xff", handler=echo, decode=decode, metadata=tenant.metadata()
    )
    assert corrupt.code is grpc.StatusCode.INVALID_ARGUMENT and decoded == [b"\xff\xff"]
    admitted = await call_through(
        chain, GET_ORG, b"", handler=echo, decode=decode, metadata=tenant.metadata()
    )
    assert admitted.code is grpc.StatusCode.OK
    assert isinstance(admitted.response, organization_service_pb2.GetOrganizationRequest)


async def test_every_outcome_carries_the_request_id() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant()
    chain = fakes.chain()
    given = (("x-request-id", "req-from-the-caller"),)
    ok = await call_through(chain, GET_ORG, handler=echo, metadata=(*tenant.metadata(), *given))
    refused = await call_through(chain, GET_ORG, handler=echo, metadata=given)
    assert ok.trailing["x-request-id"] == refused.trailing["x-request-id"] == "req-from-the-caller"
    fresh = await call_through(chain, GET_ORG, handler=echo)
    assert fresh.trailing["x-request-id"] not in ("", "req-from-the-caller")
    assert "req-from-the-caller" not in refused.details


async def test_a_servicer_failure_is_internal_with_a_generic_message() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant()

    async def broken(request: Any, context: Any) -> Any:
        raise RuntimeError("secret internals")

    outcome = await call_through(fakes.chain(), GET_ORG, handler=broken, metadata=tenant.metadata())
    assert outcome.code is grpc.StatusCode.INTERNAL
    assert "secret internals" not in outcome.details
    assert str(outcome.trailing["x-request-id"]) in outcome.details


class FailingObserver:
    def finish(self, call: CallState, duration_s: float) -> None:
        raise RuntimeError("an observer broke")


async def test_an_observer_that_fails_never_changes_the_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fakes = PathOnFakes.create()
    path = fakes.path
    chain = SecurityChain(
        policies=build_policy_table(descriptors()),
        errors=path.errors,
        steps=path.steps,
        observers=(FailingObserver(), *path.observers),
        logger=logging.getLogger("meshgate.server"),
    )

    async def who(request: Any, context: Any) -> bytes:
        return current_call.get().method.encode()

    outcome = await call_through(chain, HEALTH, handler=who)
    assert outcome.code is grpc.StatusCode.OK and outcome.response == HEALTH.encode()
    assert "observer FailingObserver failed" in caplog.text
