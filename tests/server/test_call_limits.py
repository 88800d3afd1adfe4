"""Calls in flight are bounded: on the whole server (MESHGATE_MAX_CONCURRENT_CALLS, public
health watches included, which need no key and never end by themselves) and per
connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import h2.settings
import pytest
from grpc_health.v1 import health_pb2

from server.app import MAX_STREAMS_PER_CONNECTION, RunningServer
from server.settings import Settings
from tests.support.clients import health_check, health_watch
from tests.support.pki import Pki
from tests.support.servers import serving
from tests.support.waiting import eventually
from tests.support.wire import server_settings

CAP = 10


async def test_a_connection_may_hold_at_most_its_streams(server: RunningServer, pki: Pki) -> None:
    announced = await server_settings(server.port, pki)
    code = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
    assert announced[code] == MAX_STREAMS_PER_CONNECTION == 128


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
