"""The unit tier itself: every test in it runs guarded, and the guard closes every way out."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import subprocess

import grpc
import pytest

from tests.support.unit_tier import UNIT, UnitTierViolation


def test_a_unit_test_cannot_connect_anywhere() -> None:
    with socket.socket() as sock, pytest.raises(UnitTierViolation, match="socket connect"):
        sock.connect(("127.0.0.1", 9))
    with socket.socket() as sock, pytest.raises(UnitTierViolation):
        sock.connect_ex(("127.0.0.1", 9))


def test_a_unit_test_cannot_listen() -> None:
    with socket.socket() as sock, pytest.raises(UnitTierViolation, match="socket bind"):
        sock.bind(("127.0.0.1", 0))
    with pytest.raises(UnitTierViolation, match="gRPC server"):
        grpc.aio.server()


def test_a_unit_test_cannot_open_a_grpc_channel() -> None:
    with pytest.raises(UnitTierViolation, match="gRPC channel"):
        grpc.aio.insecure_channel("localhost:1")
    with pytest.raises(UnitTierViolation, match="gRPC channel"):
        grpc.secure_channel("localhost:1", grpc.ssl_channel_credentials())


def test_a_unit_test_cannot_start_a_process() -> None:
    with pytest.raises(UnitTierViolation, match="subprocess"):
        subprocess.run(["true"], check=False)
    with pytest.raises(UnitTierViolation, match="shell command"):
        os.system("true")
    # multiprocessing's default start method goes through os.fork, the others fork_exec
    with pytest.raises(UnitTierViolation):
        multiprocessing.get_context("spawn").Process(target=print).start()


async def test_a_unit_test_cannot_start_a_process_from_asyncio() -> None:
    with pytest.raises(UnitTierViolation, match="subprocess"):
        await asyncio.create_subprocess_exec("true")
    with pytest.raises(UnitTierViolation, match="socket connect"):
        await asyncio.open_connection("127.0.0.1", 9)


def test_every_test_of_the_tier_runs_guarded(request: pytest.FixtureRequest) -> None:
    """Marked `unit` by its folder, so every phase runs guarded: a new module written under
    tests/unit/ is in the tier, guarded, without a word in it."""
    ours = [item for item in request.session.items if item.path.is_relative_to(UNIT)]
    assert request.node in ours
    for item in ours:
        assert item.get_closest_marker("unit") is not None, item.nodeid
        assert item.get_closest_marker("integration") is None, item.nodeid


def attempt_to_listen() -> str:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
    except UnitTierViolation:
        return "refused"
    return "allowed"


@pytest.fixture(scope="session")
def a_session_fixture_of_this_tier() -> str:
    """Set up by the first test asking for it, in that test's setup: like the session's
    redis-server would be, if a unit test asked for it."""
    return attempt_to_listen()


@pytest.fixture(scope="module")
def a_module_fixture_of_this_tier() -> str:
    return attempt_to_listen()


def test_fixtures_of_every_scope_are_set_up_guarded(
    a_session_fixture_of_this_tier: str, a_module_fixture_of_this_tier: str
) -> None:
    assert a_session_fixture_of_this_tier == "refused"
    assert a_module_fixture_of_this_tier == "refused"
