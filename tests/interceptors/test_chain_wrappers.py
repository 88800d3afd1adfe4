"""The chain's one wrapper body, for unary and streaming calls alike: the request id in
initial and trailing metadata, refusals through the errors step, observers once per call."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import pytest

from interceptors.chain import SecurityChain
from interceptors.context import CallState
from interceptors.errors import ErrorMapper
from interceptors.policy import Access, Policy
from storage.core.errors import NotFoundError
from tests.support.clients import raw_stream_stream, raw_unary, raw_unary_stream
from tests.support.waiting import eventually

SERVICE = "test.Chain"
PUBLIC = Policy(access=Access.PUBLIC)


class Calls:
    def __init__(self) -> None:
        self.finished: list[CallState] = []

    def finish(self, call: CallState, duration_s: float) -> None:
        self.finished.append(call)


async def unary(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        raise NotFoundError("no such thing")
    return request.upper()


async def yielding(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for part in request.split(b","):
        if part == b"missing":
            raise NotFoundError("no such part")
        yield part


async def writing(request: bytes, context: Any) -> None:  # the reader/writer form
    for part in request.split(b","):
        await context.write(part)


async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request[::-1]


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, Calls]]:
    calls = Calls()
    chain = SecurityChain(
        policies={f"/{SERVICE}/{name}": PUBLIC for name in ("Unary", "Yield", "Write", "Echo")},
        errors=ErrorMapper(logger=logging.getLogger("test.errors")),
        steps=(),
        observers=(calls,),
        logger=logging.getLogger("test"),
    )
    server = grpc.aio.server(interceptors=(chain,))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Yield": grpc.unary_stream_rpc_method_handler(yielding),
                    "Write": grpc.unary_stream_rpc_method_handler(writing),
                    "Echo": grpc.stream_stream_rpc_method_handler(echo),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, calls
    finally:
        await server.stop(None)


async def finished(calls: Calls) -> None:
    """A refused call is finished (observed) once its status went out: wait for that."""

    async def observed() -> bool:
        return bool(calls.finished)

    await eventually(observed, timeout_s=5)


def _request_id(metadata: Sequence[tuple[str, str | bytes]] | Iterable[Any]) -> Any:
    return dict(metadata).get("x-request-id")


async def test_unary_call_carries_the_request_id_both_ways(
    served: tuple[grpc.aio.Channel, Calls],
) -> None:
    channel, calls = served
    call = raw_unary(channel, f"/{SERVICE}/Unary")(b"abc", metadata=(("x-request-id", "r-1"),))
    assert await call == b"ABC"
    assert _request_id(await call.initial_metadata()) == "r-1"
    assert _request_id(await call.trailing_metadata()) == "r-1"
    assert [(c.request_id, c.code, c.request) for c in calls.finished] == [
        ("r-1", grpc.StatusCode.OK, b"abc")
    ]


async def test_unary_refusal_goes_through_the_errors_step(
    served: tuple[grpc.aio.Channel, Calls],
) -> None:
    channel, calls = served
    call = raw_unary(channel, f"/{SERVICE}/Unary")(b"missing")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing"
    request_id = _request_id(info.value.trailing_metadata())
    assert request_id and _request_id(info.value.initial_metadata()) == request_id
    await finished(calls)
    assert [c.code for c in calls.finished] == [grpc.StatusCode.NOT_FOUND]


@pytest.mark.parametrize("name", ["Yield", "Write"])
async def test_server_streams_of_either_form(
    served: tuple[grpc.aio.Channel, Calls], name: str
) -> None:
    channel, calls = served
    call = raw_unary_stream(channel, f"/{SERVICE}/{name}")(
        b"a,b,c", metadata=(("x-request-id", "s"),)
    )
    assert [item async for item in call] == [b"a", b"b", b"c"]
    assert await call.code() is grpc.StatusCode.OK
    assert _request_id(await call.initial_metadata()) == "s"
    assert _request_id(await call.trailing_metadata()) == "s"
    assert [(c.code, c.request) for c in calls.finished] == [(grpc.StatusCode.OK, None)]


async def test_a_stream_refused_midway_keeps_what_was_sent(
    served: tuple[grpc.aio.Channel, Calls],
) -> None:
    channel, calls = served
    call = raw_unary_stream(channel, f"/{SERVICE}/Yield")(b"a,missing,c")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in call:
            received.append(item)
    assert received == [b"a"]
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such part"
    assert _request_id(info.value.trailing_metadata())
    await finished(calls)
    assert [c.code for c in calls.finished] == [grpc.StatusCode.NOT_FOUND]


async def test_bidirectional_stream(served: tuple[grpc.aio.Channel, Calls]) -> None:
    channel, calls = served

    async def requests() -> AsyncIterator[bytes]:
        for item in (b"ab", b"cd"):
            yield item

    call = raw_stream_stream(channel, f"/{SERVICE}/Echo")(requests())
    assert [item async for item in call] == [b"ba", b"dc"]
    assert await call.code() is grpc.StatusCode.OK
    assert len(calls.finished) == 1
