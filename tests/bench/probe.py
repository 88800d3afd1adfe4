"""Runs a server module with probes the bench reads in place:
`python -m tests.bench.probe --out FILE MODULE ARGS...`.

The server (`server.cli serve ...` or `tests.bench.echo_server ...`) runs as it would on
its own, in this process. The bench opens a measured window with SIGUSR1 and closes it
with SIGUSR2; the figures of the window are then written to `--out` as JSON (to a
temporary name, then renamed, so a reader never sees half a file). The handlers run on
the main thread, which runs the event loop, between two of its callbacks. In a window:

- the garbage collector's pauses, timed by `gc.callbacks`: count, total and longest per
  generation (always; a callback per collection, nothing per call);
- when the window's request asks for `loop`: the event loop's iterations
  (`BaseEventLoop._run_once`) and the callbacks it ran (`Handle._run`), counted by
  wrapping both for that window only (a Python call more per iteration and callback);
- when it names a `profile` file: cProfile on the event loop's thread for the window,
  its statistics written there (absolute times inflated by the profiler; proportions
  hold);
- when it asks for `collect`: once the window is closed, a full collection
  (`gc.collect()`) is timed: how long one would hold the event loop at that moment,
  whether or not one fell inside the window.

The request is `<out>.request`, JSON written by the bench before SIGUSR1 (none: GC only).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["Probe", "main"]


class Probe:
    def __init__(self, *, out: Path) -> None:
        self._out = out
        self._request = Path(f"{out}.request")
        self._profile_path: Path | None = None
        self._profiler: cProfile.Profile | None = None
        self._unpatch: list[tuple[Any, str, Any]] = []
        self._collect = False
        self._gc_started = 0.0
        self._pauses: dict[int, list[float]] = {}
        self._iterations = 0
        self._callbacks = 0
        self._window_started = time.perf_counter()
        self._cpu_started = time.process_time()
        gc.callbacks.append(self._on_gc)
        signal.signal(signal.SIGUSR1, self._open)
        signal.signal(signal.SIGUSR2, self._close)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self._pauses.setdefault(info["generation"], []).append(pause)

    def _count_loop(self) -> None:
        loop_class: Any = asyncio.base_events.BaseEventLoop
        handle_class: Any = asyncio.events.Handle
        run_once, run = loop_class._run_once, handle_class._run
        probe = self

        def counted_run_once(loop: Any) -> None:
            probe._iterations += 1
            run_once(loop)

        def counted_run(handle: Any) -> None:
            probe._callbacks += 1
            run(handle)

        self._unpatch = [(loop_class, "_run_once", run_once), (handle_class, "_run", run)]
        loop_class._run_once = counted_run_once
        handle_class._run = counted_run

    def _open(self, _signum: int, _frame: FrameType | None) -> None:
        request: dict[str, Any] = (
            json.loads(self._request.read_text()) if self._request.exists() else {}
        )
        self._pauses = {}
        self._iterations = self._callbacks = 0
        if request.get("loop"):
            self._count_loop()
        self._profile_path = Path(request["profile"]) if request.get("profile") else None
        self._collect = bool(request.get("collect"))
        self._window_started = time.perf_counter()
        self._cpu_started = time.process_time()
        if self._profile_path is not None:
            self._profiler = cProfile.Profile()
            self._profiler.enable()

    def _close(self, _signum: int, _frame: FrameType | None) -> None:
        if self._profiler is not None:
            self._profiler.disable()
            assert self._profile_path is not None
            self._profiler.dump_stats(self._profile_path)
            self._profiler = None
        for owner, name, original in self._unpatch:
            setattr(owner, name, original)
        self._unpatch = []
        figures = {
            "window_s": time.perf_counter() - self._window_started,
            # this process's CPU over the window (the bench samples /proc as well)
            "cpu_s": time.process_time() - self._cpu_started,
            "loop_iterations": self._iterations,
            "loop_callbacks": self._callbacks,
            "gc": {
                str(generation): {
                    "count": len(pauses),
                    "total_ms": sum(pauses) * 1e3,
                    "longest_ms": max(pauses) * 1e3,
                }
                for generation, pauses in sorted(self._pauses.items())
            },
            "gc_objects": len(gc.get_objects()),
            "gc_frozen": gc.get_freeze_count(),
            "gc_threshold": list(gc.get_threshold()),
        }
        if self._collect:
            started = time.perf_counter()
            gc.collect()
            figures["full_collection_ms"] = (time.perf_counter() - started) * 1e3
        written = self._out.with_name(self._out.name + ".part")
        written.write_text(json.dumps(figures))
        os.replace(written, self._out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.probe", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the window's figures (JSON)")
    parser.add_argument("module", help="the server's module, run as __main__")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the module's arguments")
    args = parser.parse_args()
    Probe(out=args.out)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
