"""Deadlines that a stalled event loop does not break: an answer that arrived while the loop
was held past the deadline is read (where `asyncio.wait_for` reports a timeout); a store
silent while the loop runs still times out."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from storage.backends.deadlines import within
from tests.support.load import burn_cpu


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, store = socket.socketpair()
    ours.setblocking(False)
    yield ours, store
    ours.close()
    store.close()


async def read_answer(sock: socket.socket) -> bytes:
    """An answer read as a driver reads one: the bytes, then a few steps of the loop."""
    data = await asyncio.get_running_loop().sock_recv(sock, 64)
    for _ in range(5):
        await asyncio.sleep(0)
    return data


async def answered_during_a_stall(
    deadline: Callable[[Awaitable[bytes], float], Awaitable[bytes]],
    pair: tuple[socket.socket, socket.socket],
) -> bytes:
    ours, store = pair
    call = asyncio.ensure_future(deadline(read_answer(ours), 0.1))
    await asyncio.sleep(0.01)  # the call waits for its answer
    store.send(b"answer")  # the store answers in time...
    burn_cpu(0.3)  # ...while the process is busy past the deadline
    return await call


async def test_an_answer_that_came_while_the_loop_was_stalled_is_read(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    assert await answered_during_a_stall(within, pair) == b"answer"


async def test_wait_for_reports_such_an_answer_as_a_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Why `within` exists: the expired timer runs before the answer is read."""
    with pytest.raises(TimeoutError):
        await answered_during_a_stall(asyncio.wait_for, pair)


async def test_a_store_silent_while_the_loop_runs_times_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _store = pair
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(read_answer(ours), 0.05)
    assert time.monotonic() - started < 1.0


async def test_cancelling_the_caller_cancels_the_call(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _store = pair
    read = asyncio.ensure_future(read_answer(ours))
    call = asyncio.ensure_future(within(read, 10.0))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert read.cancelled()
