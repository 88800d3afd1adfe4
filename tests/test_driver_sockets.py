"""The suite's unraisable-warning filter (tests/support/driver_sockets.py): a socket left
unclosed towards a registered MongoDB is the driver's and dropped; any other unclosed
socket still reaches pytest, which fails the test that leaked it."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import pytest

from tests.support import driver_sockets


@dataclass(frozen=True)
class Unraisable:
    """What CPython hands `sys.unraisablehook` for an unclosed socket (its type cannot be
    instantiated from Python)."""

    exc_type: type[BaseException]
    exc_value: BaseException
    exc_traceback: TracebackType | None
    err_msg: str | None
    object: socket.socket


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    registered = socket.create_server(("127.0.0.1", 0))
    other = socket.create_server(("127.0.0.1", 0))
    port = registered.getsockname()[1]
    driver_sockets.register_mongodb_uri(f"mongodb://127.0.0.1:{port}/?directConnection=true")
    yield registered, other
    registered.close()
    other.close()


def test_only_sockets_to_a_registered_mongodb_are_dropped(
    listeners: tuple[socket.socket, socket.socket],
) -> None:
    registered, other = listeners
    seen: list[int] = []  # the peer ports of what reached the previous hook

    def previous(unraisable: sys.UnraisableHookArgs) -> None:
        leaked = cast(Unraisable, unraisable).object
        seen.append(leaked.getpeername()[1])

    saved = sys.unraisablehook
    sys.unraisablehook = previous
    try:
        driver_sockets.ignore_driver_sockets()
        for listener in (registered, other):
            with socket.create_connection(listener.getsockname()) as client:
                warning = ResourceWarning(f"unclosed {client!r}")
                unraisable = Unraisable(ResourceWarning, warning, None, None, client)
                sys.unraisablehook(cast("sys.UnraisableHookArgs", unraisable))
    finally:
        sys.unraisablehook = saved
    assert seen == [other.getsockname()[1]]
