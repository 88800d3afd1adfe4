"""The unit tier's promise, enforced: no process started, no socket connected or bound.

Every test of the unit tier (tests/unit/, and the fake half of tests/contracts/) is set
up, run and torn down inside `no_processes_or_network` (`guarded`, applied by the hooks
in tests/conftest.py): a connect, a bind, a subprocess, a fork or a gRPC server or
channel fails at once with `UnitTierViolation` naming what was tried, so a unit test
that reaches for Redis, MongoDB, a server process or the network, itself or through a
fixture of any scope, fails loudly where it is written instead of quietly turning the
tier slow.
"""

from __future__ import annotations

import _posixsubprocess
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

__all__ = [
    "CONTRACTS",
    "FAKE_AND_REAL",
    "UNIT",
    "UnitTierViolation",
    "guarded",
    "mark_tier",
    "no_processes_or_network",
]

_TESTS = Path(__file__).resolve().parents[1]
# a test's tier is where it is written: here the unit tier ...
UNIT = _TESTS / "unit"
# ... here the contract tests, each case naming its tier (the fake's unit, the real's
# integration); everywhere else the integration tier
CONTRACTS = _TESTS / "contracts"
_TIERS = ("unit", "integration")

# the parameters of a contract test's store fixture: the fake's cases in the unit tier, the
# real store's in the integration tier (tests/contracts/)
FAKE_AND_REAL = [
    pytest.param("fake", marks=pytest.mark.unit),
    pytest.param("real", marks=pytest.mark.integration),
]


class UnitTierViolation(AssertionError):
    """A unit test tried to leave its process: move it to an integration folder, or give
    the code under test a fake from tests/support/fakes/."""


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        raise UnitTierViolation(
            f"{what} in the unit tier: unit tests start no process and open no connection"
        )

    return refused


# (owner, attribute, what it does): every way out of the process the unit tier closes
_EXITS: tuple[tuple[Any, str, str], ...] = (
    (socket.socket, "connect", "a socket connect"),
    (socket.socket, "connect_ex", "a socket connect"),
    (socket.socket, "bind", "a socket bind"),
    (subprocess.Popen, "__init__", "a subprocess"),
    (subprocess, "_fork_exec", "a subprocess"),
    (_posixsubprocess, "fork_exec", "a subprocess"),
    (os, "fork", "a fork"),
    (os, "posix_spawn", "a subprocess"),
    (os, "posix_spawnp", "a subprocess"),
    (os, "system", "a shell command"),
    (grpc, "server", "a gRPC server"),
    (grpc, "insecure_channel", "a gRPC channel"),
    (grpc, "secure_channel", "a gRPC channel"),
    (grpc.aio, "server", "a gRPC server"),
    (grpc.aio, "insecure_channel", "a gRPC channel"),
    (grpc.aio, "secure_channel", "a gRPC channel"),
)


@contextmanager
def no_processes_or_network() -> Iterator[None]:
    """While inside: every exit in `_EXITS` raises `UnitTierViolation`."""
    with pytest.MonkeyPatch.context() as patch:
        for owner, attribute, what in _EXITS:
            if hasattr(owner, attribute):
                patch.setattr(owner, attribute, _refuse(what))
        yield


def mark_tier(item: pytest.Item) -> None:
    """Marks `item` `unit` or `integration` by its folder (`pytest -m unit` selects the unit
    tier); a contract case carries its tier itself, and nothing else may name one."""
    named = {mark.name for mark in item.iter_markers() if mark.name in _TIERS}
    path = Path(str(item.path)).resolve()
    if path.is_relative_to(CONTRACTS):
        if len(named) != 1:
            raise pytest.UsageError(f"{item.nodeid}: a contract case is marked unit or integration")
        return
    tier = "unit" if path.is_relative_to(UNIT) else "integration"
    if named - {tier}:
        raise pytest.UsageError(
            f"{item.nodeid}: the folder makes it {tier}; move the test instead of marking it"
        )
    item.add_marker(tier)


def guarded(item: pytest.Item) -> AbstractContextManager[None]:
    """What a phase of `item` (setup, call, teardown) runs inside: the guard for the unit
    tier, nothing for the integration tier."""
    return no_processes_or_network() if item.get_closest_marker("unit") else nullcontext()
