"""The embedded MongoDB engine as a process of its own: `python -m tests.support.mongo_engine
--port P --data-dir D`. SIGTERM stops it cleanly (its data stays in D), so a test can stop
MongoDB and start it again on the same port with the same data."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from server.embedded import EmbeddedMongo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    engine = EmbeddedMongo(data_dir=args.data_dir, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(engine.start(), flush=True)
    stop.wait()
    engine.close()


if __name__ == "__main__":
    main()
