"""Sockets the MongoDB driver leaves to the collector, told from every other unclosed socket.

On a loaded machine a heartbeat of PyMongo's monitor can time out; the driver then drops
that connection without closing it, and CPython warns (`ResourceWarning: unclosed
<socket.socket ...>`) whenever the collector reaches it, in whichever test runs then
(seen in a full run: the teardown of an unrelated test failed on it). With warnings as
errors that is a failure of the suite for the driver's behaviour, not ours. The sessions'
MongoDB servers register their ports here; `ignore_driver_sockets` drops only the warning
of an unclosed socket connected to one of them, so an unclosed socket of our own code, or
to any other peer, still fails the test that leaked it.
"""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlsplit

__all__ = ["ignore_driver_sockets", "register_mongodb", "register_mongodb_uri"]

_PORTS: set[int] = set()


def register_mongodb(port: int) -> None:
    """A MongoDB server the suite's clients talk to listens on `port` (loopback)."""
    _PORTS.add(port)


def register_mongodb_uri(uri: str) -> None:
    """Every host's port named in a `mongodb://` URI (27017 when a host names none)."""
    hosts = urlsplit(uri).netloc.rpartition("@")[2]
    for host in hosts.split(","):
        port = host.rpartition(":")[2] if host.rpartition(":")[0] else ""
        register_mongodb(int(port) if port.isdigit() else 27017)


def _abandoned_by_the_driver(unraisable: sys.UnraisableHookArgs) -> bool:
    if not isinstance(unraisable.exc_value, ResourceWarning):
        return False
    leaked = unraisable.object
    if not isinstance(leaked, socket.socket):
        return False
    try:
        peer = leaked.getpeername()
    except OSError:
        return False
    return isinstance(peer, tuple) and peer[1] in _PORTS


def ignore_driver_sockets() -> None:
    """Wraps the current `sys.unraisablehook` (pytest's, which turns what it is given into
    a failure) so that it never sees a socket the driver abandoned."""
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not _abandoned_by_the_driver(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
