"""The chain's one wrapper body, for unary and streaming calls alike: the request id in
trailing metadata, refusals through the errors step, observers once per call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from calls.policy import Access, Policy
from calls.state import CallState
from interceptors.chain import SecurityChain
from interceptors.errors import ErrorMapper
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
    assert _request_id(await call.trailing_metadata()) == "r-1"
    assert tuple(await call.initial_metadata()) == ()  # a unary call sends no initial metadata
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
    assert request_id and tuple(info.value.initial_metadata()) == ()
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


class Decoder:
    """A request deserializer that records what it decoded, and refuses b"bad"."""

    def __init__(self) -> None:
        self.decoded: list[bytes] = []

    def __call__(self, raw: bytes) -> bytes:
        self.decoded.append(raw)
        if raw == b"bad":
            raise ValueError("not a message")
        return raw.upper()


class Refuse:
    """A step that refuses every call (as authentication refuses a missing key)."""

    def check(self, call: CallState, context: Any) -> None:
        raise NotFoundError("refused before decoding")


@dataclass
class Decoding:
    open: grpc.aio.Channel  # a chain without steps
    refused: grpc.aio.Channel  # a chain whose one step refuses every call
    decoder: Decoder
    handled: list[bytes]  # what the handlers were handed


@pytest.fixture
async def decoding() -> AsyncIterator[Decoding]:
    """Unary and bidirectional methods with a recording deserializer, behind a chain that
    admits everything (`test.Open`) and one that refuses everything (`test.Refused`)."""
    decoder, handled = Decoder(), []

    async def unary(request: bytes, context: Any) -> bytes:
        handled.append(request)
        return request

    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            handled.append(request)
            yield request

    servers, ports = [], []
    for service, steps in (("test.Open", ()), ("test.Refused", (Refuse(),))):
        chain = SecurityChain(
            policies={f"/{service}/{name}": PUBLIC for name in ("Unary", "Echo")},
            errors=ErrorMapper(logger=logging.getLogger("test.errors")),
            steps=steps,
            observers=(),
            logger=logging.getLogger("test"),
        )
        server = grpc.aio.server(interceptors=(chain,))
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, request_deserializer=decoder),
            "Echo": grpc.stream_stream_rpc_method_handler(echo, request_deserializer=decoder),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as open_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as refused_channel,
        ):
            yield Decoding(open_channel, refused_channel, decoder, handled)
    finally:
        for server in servers:
            await server.stop(None)


async def items(*values: bytes) -> AsyncIterator[bytes]:
    for value in values:
        yield value


async def test_a_refused_call_is_never_decoded(decoding: Decoding) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_unary(decoding.refused, "/test.Refused/Unary")(b"bad")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    # the stream is refused on its headers, before any message: a message the client sends
    # then races the refusal (grpc may report its failed write, INTERNAL, as the status),
    # so the status is read first, and a message written afterwards must go nowhere
    stream = raw_stream_stream(decoding.refused, "/test.Refused/Echo")()
    assert await stream.code() is grpc.StatusCode.NOT_FOUND
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await stream.write(b"bad")
    assert decoding.decoder.decoded == [] and decoding.handled == []


async def test_an_admitted_call_is_decoded_and_a_stream_message_by_message(
    decoding: Decoding,
) -> None:
    assert await raw_unary(decoding.open, "/test.Open/Unary")(b"a") == b"A"
    stream = raw_stream_stream(decoding.open, "/test.Open/Echo")(
        items(b"b", b"c", b"bad", b"never")
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in stream:
            received.append(item)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request message is malformed",
    )
    # the stream's messages were decoded as the servicer read them, up to the bad one
    assert received == [b"B", b"C"] and decoding.handled == [b"A", b"B", b"C"]
    assert decoding.decoder.decoded[-1] == b"bad" and b"never" not in decoding.decoder.decoded


async def test_only_registered_methods_keep_a_wrapped_handler() -> None:
    """The chain keeps one wrapped handler per method grpc routes to a handler; a path no
    handler serves (a caller can send any) is answered afresh and kept nowhere."""
    asked: list[str] = []
    known: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(unary)

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        asked.append(details.method)
        return known if details.method == f"/{SERVICE}/Unary" else None

    chain = SecurityChain(
        policies={f"/{SERVICE}/Unary": PUBLIC},
        errors=ErrorMapper(logger=logging.getLogger("test.errors")),
        steps=(),
        observers=(),
        logger=logging.getLogger("test"),
    )

    def details(method: str) -> grpc.HandlerCallDetails:
        return cast(grpc.HandlerCallDetails, SimpleNamespace(method=method, invocation_metadata=()))

    for _ in range(3):
        assert await chain.intercept_service(continuation, details(f"/{SERVICE}/Unary"))
    for i in range(1000):
        assert await chain.intercept_service(continuation, details(f"/x{i}/Y")) is None
    assert await chain.intercept_service(continuation, details("/x0/Y")) is None
    # the known method was looked up once; every unknown path each time it came
    assert asked.count(f"/{SERVICE}/Unary") == 1 and len(asked) == 1 + 1000 + 1
