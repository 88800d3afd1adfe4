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
from interceptors.chain import SecurityChain
from interceptors.errors import ErrorMapper
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
