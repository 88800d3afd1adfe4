"""Calls and connections are bounded: calls in flight on the whole server
(MESHGATE_MAX_CONCURRENT_CALLS, public health watches included, which need no key and
never end by themselves; no cap per connection: a client's burst of streams on a new
connection, sent before it reads the server's SETTINGS, would be refused); connections
open at once (MESHGATE_MAX_CONNECTIONS), the time a TLS handshake may take,
and how long an idle connection is kept (MESHGATE_CONNECTION_IDLE_S)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2

from server.app import HANDSHAKE_TIMEOUT_S, RunningServer
from server.settings import Settings
from tests.support.clients import health_check, health_watch
from tests.support.pki import Pki
from tests.support.servers import serving
from tests.support.waiting import eventually
from tests.support.wire import seconds_until_goaway

CAP = 10


async def test_health_watches_without_a_key_cannot_hold_more_than_the_cap(
    settings: Settings, pki: Pki
) -> None:
    own = replace(settings, max_concurrent_calls=CAP, task_workers=0, webhook_workers=0)
    async with serving(own, pki) as (_, _, channel):
        check, watch_health = health_check(channel), health_watch(channel)
        watches = [watch_health(health_pb2.HealthCheckRequest()) for _ in range(CAP)]
        try:
            for watch in watches:  # each is open: it has answered once
                first = await asyncio.wait_for(watch.read(), 10)
                assert isinstance(first, health_pb2.HealthCheckResponse)
                assert first.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await check(health_pb2.HealthCheckRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for watch in watches:
                watch.cancel()

        async def answers() -> bool:
            try:
                await check(health_pb2.HealthCheckRequest(), timeout=10)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        await eventually(answers)  # the slots come back once the watches end


async def _closed_within(port: int, timeout_s: float) -> float | None:
    """Seconds until the server closes a TCP connection that sends nothing (no TLS
    handshake), or None if it is still open after `timeout_s`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(1), timeout_s)
    except TimeoutError:
        return None
    finally:
        writer.transport.abort()
    assert data == b""
    return time.monotonic() - started


async def test_a_connection_that_never_completes_its_handshake_is_closed(
    server: RunningServer,
) -> None:
    closed_after = await _closed_within(server.port, HANDSHAKE_TIMEOUT_S + 10)
    assert closed_after is not None and closed_after >= HANDSHAKE_TIMEOUT_S - 1


async def test_connections_beyond_the_cap_are_closed_and_idle_ones_are_let_go(
    settings: Settings, pki: Pki
) -> None:
    own = replace(
        settings,
        max_connections=CAP,
        connection_idle_s=1.0,
        task_workers=0,
        webhook_workers=0,
        metrics_listen=None,
    )
    async with serving(own, pki) as (running, _, channel):
        check = health_check(channel)
        await check(health_pb2.HealthCheckRequest(), timeout=10)  # the channel's connection
        held = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(CAP - 1)]
        try:
            assert await _closed_within(running.port, 2.0) is not None  # one over the cap
        finally:
            for _, writer in held:
                writer.transport.abort()
        # a connection with no call in flight is let go after the idle time (GOAWAY) ...
        # (once the server has seen the held connections go and has a slot again)
        for _ in range(20):
            idle_for = await seconds_until_goaway(running.port, pki, 10.0)
            if idle_for is not None:
                break
            await asyncio.sleep(0.1)
        assert idle_for is not None and idle_for >= 0.9
        # ... and a client whose connection was let go reconnects on its next call
        answer = await check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
