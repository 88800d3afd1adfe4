"""Access lines are written in blocks (server/log_buffer.py): held for a bounded time and
size, written before any other record, and all written when the handler is closed."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from calls.policy import Access, Policy
from calls.state import CallState
from interceptors.access_log import AccessRecord
from server.log_buffer import BufferedAccessLines
from server.logs import GuardedJsonFormatter
from tests.support.waiting import wait_until


def access_record(request_id: str) -> AccessRecord:
    call = CallState(
        method="/meshgate.v1.NamespaceService/GetNamespace",
        policy=Policy(access=Access.API_KEY),
        request_id=request_id,
        metadata={},
        peer_address="ipv4:127.0.0.1:5555",
        started_at=time.time(),
    )
    return AccessRecord("meshgate.access", time.time(), call, 0.001)


def other_record(message: str) -> logging.LogRecord:
    return logging.LogRecord("meshgate", logging.WARNING, __file__, 1, message, None, None)


def written(stream: io.StringIO) -> list[str]:
    """The request id or message of every line written so far, in order."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line.get("request_id") or line["message"] for line in lines]


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


@contextmanager
def buffered(
    stream: io.StringIO, *, flush_after_s: float, max_bytes: int = 64 * 1024
) -> Iterator[BufferedAccessLines]:
    handler = BufferedAccessLines(stream, flush_after_s=flush_after_s, max_bytes=max_bytes)
    handler.setFormatter(GuardedJsonFormatter())
    try:
        yield handler
    finally:
        handler.close()


@pytest.fixture
def held(stream: io.StringIO) -> Iterator[BufferedAccessLines]:
    """A handler whose blocks wait long enough that only size, another record or a flush
    writes them while a test runs."""
    with buffered(stream, flush_after_s=600.0) as handler:
        yield handler


def test_access_lines_wait_and_another_record_writes_them_first(
    held: BufferedAccessLines, stream: io.StringIO
) -> None:
    for request_id in ("r1", "r2", "r3"):
        held.handle(access_record(request_id))
    assert written(stream) == []
    held.handle(other_record("a warning"))  # never waits, and comes after the calls before it
    assert written(stream) == ["r1", "r2", "r3", "a warning"]


def test_closing_writes_the_held_lines(held: BufferedAccessLines, stream: io.StringIO) -> None:
    """A normal exit or a drain ends in logging.shutdown, which flushes and closes."""
    held.handle(access_record("last"))
    held.close()
    assert written(stream) == ["last"]


def test_a_full_block_is_written_at_once(stream: io.StringIO) -> None:
    with buffered(stream, flush_after_s=600.0, max_bytes=2_000) as handler:
        ids = [f"id{index}" for index in range(20)]  # each line is some 300 bytes
        for request_id in ids:
            handler.handle(access_record(request_id))
        lines = written(stream)
        assert 0 < len(lines) < len(ids) and lines == ids[: len(lines)]
        assert len(stream.getvalue()) >= 2_000


def test_a_block_is_written_within_its_flush_interval(stream: io.StringIO) -> None:
    """The bound on what a crash can lose: nothing waits longer than the interval (the
    writer thread's wake-up aside), so a reader sees a line shortly after its call."""
    with buffered(stream, flush_after_s=0.05) as handler:
        handler.handle(access_record("soon"))
        wait_until(
            lambda: written(stream) == ["soon"],
            timeout_s=10,
            interval_s=0.01,
            failure=lambda: f"the line was not written: {stream.getvalue()!r}",
        )


def test_every_line_of_a_busy_writer_is_written_once_in_order(stream: io.StringIO) -> None:
    with buffered(stream, flush_after_s=0.001, max_bytes=4_096) as handler:
        ids = [os.urandom(6).hex() for _ in range(2_000)]
        for request_id in ids:
            handler.handle(access_record(request_id))
        handler.flush()
        assert written(stream) == ids
