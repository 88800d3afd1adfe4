"""Per-method plans: which steps and observers run is decided once per method, from its
policy; a step or observer that does not apply to a method never runs for its calls."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from calls.policy import Access, Policy
from calls.state import CallState
from interceptors.audit import AuditTrail
from interceptors.authentication import Authentication
from interceptors.authorization import Authorization
from interceptors.chain import SecurityChain, plan_for
from interceptors.credits import Credits
from interceptors.errors import ErrorMapper
from interceptors.identity import OrganizationIdentity
from interceptors.namespace import NamespaceScope
from interceptors.peer import PeerIdentity
from interceptors.rate_limit import RateLimit
from interceptors.telemetry import Telemetry
from interceptors.usage import UsageObserver
from server.policies import build_policy_table
from server.registry import descriptors
from tests.support.clients import raw_unary

SERVICE = "test.Plans"


class Recorder:
    """A step and observer that notes every call it sees; `only` limits it to API-key
    methods through `applies` / `observes` (the chain reads them once per method)."""

    def __init__(self, name: str, seen: list[str], *, only_api_key: bool) -> None:
        self.name, self.seen = name, seen
        if only_api_key:
            self.applies = self.observes = self._api_key

    @staticmethod
    def _api_key(policy: Policy) -> bool:
        return policy.access is Access.API_KEY

    def check(self, call: CallState, context: Any) -> None:
        self.seen.append(f"check {self.name}")

    def finish(self, call: CallState, duration_s: float) -> None:
        self.seen.append(f"finish {self.name}")


async def answer(request: bytes, context: Any) -> bytes:
    return request


@pytest.fixture
async def planned() -> AsyncIterator[tuple[grpc.aio.Channel, list[str]]]:
    seen: list[str] = []
    everywhere = Recorder("everywhere", seen, only_api_key=False)
    keyed = Recorder("keyed", seen, only_api_key=True)
    chain = SecurityChain(
        policies={f"/{SERVICE}/Public": Policy(access=Access.PUBLIC)},
        errors=ErrorMapper(logger=logging.getLogger("test.errors")),
        steps=(keyed, everywhere),
        observers=(keyed, everywhere),
        logger=logging.getLogger("test"),
    )
    server = grpc.aio.server(interceptors=(chain,))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Public": grpc.unary_unary_rpc_method_handler(answer)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, seen
    finally:
        await server.stop(None)


async def test_a_step_that_does_not_apply_never_runs(
    planned: tuple[grpc.aio.Channel, list[str]],
) -> None:
    channel, seen = planned
    for _ in range(2):
        assert await raw_unary(channel, f"/{SERVICE}/Public")(b"x") == b"x"
    assert seen == ["check everywhere", "finish everywhere"] * 2


def test_the_request_paths_plans_follow_the_declared_policies() -> None:
    """The real steps' own tests, read off the policy table (the chain asks the same)."""
    table = build_policy_table(descriptors())
    steps = (
        PeerIdentity,
        Authentication,
        OrganizationIdentity,
        Authorization,
        NamespaceScope,
        RateLimit,
        Credits,
        AuditTrail,
    )
    observers = (Telemetry, UsageObserver, AuditTrail)

    def names(parts: tuple[type, ...]) -> list[str]:
        return [part.__name__ for part in parts]

    health = table["/grpc.health.v1.Health/Check"]
    assert names(plan_for(steps, health)) == ["PeerIdentity"]
    assert names(plan_for(observers, health, test="observes")) == ["Telemetry"]
    get_namespace = table["/meshgate.v1.NamespaceService/GetNamespace"]  # read, cost 1
    assert names(plan_for(steps, get_namespace)) == names(steps[:-1])
    assert names(plan_for(observers, get_namespace, test="observes")) == names(observers)
    create_key = table["/meshgate.v1.KeyService/CreateKey"]  # admin, audited, no namespace
    assert "NamespaceScope" not in names(plan_for(steps, create_key))
    assert "AuditTrail" in names(plan_for(steps, create_key))
    grant = table["/meshgate.v1.UsageService/GrantCredits"]  # internal peer, audited
    assert names(plan_for(steps, grant)) == ["PeerIdentity", "Authorization", "AuditTrail"]
    assert names(plan_for(observers, grant, test="observes")) == ["Telemetry"]
