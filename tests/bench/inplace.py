"""Where a server's time goes, measured in place (the bench's fixed-rate part).

Each server runs under tests/bench/probe.py and is driven at a fixed open-loop rate;
over the measured window this module's watchers collect:

- `ProbeWindow`: the probe's figures (GC pauses by generation, and with `--loop` the
  event loop's iterations and callbacks), opened and closed by signals;
- `PerfWindow`: `perf record -e cpu-clock -p PID` over the window, then
  `perf report --sort dso`: the share of the process's CPU samples in each library
  (where perf works: `perf_available()`; else the process's CPU time only).

`cpu_by_library` turns the shares into microseconds per call, and `table` prints them
beside the loop and GC figures. The bench runs both in `load(..., watchers=...)`.
"""

from __future__ import annotations

import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "LIBRARIES",
    "PerfWindow",
    "ProbeWindow",
    "Watcher",
    "cpu_by_library",
    "gc_line",
    "perf_available",
    "profile_table",
    "table",
]

# perf's shared objects, grouped: (label, test on the dso name); the first that matches
LIBRARIES: tuple[tuple[str, str], ...] = (
    ("libpython (bytecode, objects, GC)", r"^libpython|^python3"),
    ("cygrpc (grpc's Cython and C core)", r"^cygrpc"),
    ("kernel", r"^\[kernel|^\[vdso"),
    ("libc", r"^libc[.-]|^libm[.-]|^ld-linux"),
    ("protobuf (upb)", r"^_message\."),
    ("other extension modules", r"."),
)
_REPORT_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


class Watcher(Protocol):
    """Started when the load generator opens its measured window, stopped when it closes
    it; what `stop` returns joins the window's result."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, Any]: ...


class ProbeWindow:
    """The figures tests/bench/probe.py keeps in the server's process, for one window."""

    def __init__(
        self,
        *,
        pid: int,
        out: Path,
        loop: bool = False,
        profile: Path | None = None,
        collect: bool = False,
    ) -> None:
        self._pid = pid
        self._out = out
        self._request = {
            "loop": loop,
            "profile": str(profile) if profile else None,
            "collect": collect,
        }

    def start(self) -> None:
        self._out.unlink(missing_ok=True)
        Path(f"{self._out}.request").write_text(json.dumps(self._request))
        os.kill(self._pid, signal.SIGUSR1)

    def stop(self) -> dict[str, Any]:
        os.kill(self._pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not self._out.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the probe of process {self._pid} wrote no figures")
            time.sleep(0.01)
        figures: dict[str, Any] = json.loads(self._out.read_text())
        return {"probe": figures}


def perf_available() -> str | None:
    """None when `perf record -e cpu-clock` can sample a process here, else why not."""
    perf = shutil.which("perf")
    if perf is None:
        return "no perf on the PATH"
    with tempfile.TemporaryDirectory(prefix="meshgate-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        try:
            done = subprocess.run(
                [perf, "record", "-q", "-e", "cpu-clock", "-o", str(data), "--", "true"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"perf record failed: {exc}"
        if done.returncode != 0 or not data.exists() or data.stat().st_size == 0:
            return f"perf record failed: {done.stderr.strip()[-200:] or done.returncode}"
    return None


class PerfWindow:
    """`perf record -e cpu-clock -p PID` from `start` to `stop` (SIGINT), then the samples'
    shares by shared object (self time: no call graphs, so each sample counts once)."""

    def __init__(self, *, pid: int, data: Path) -> None:
        self._pid = pid
        self._data = data
        self._recording: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        perf = shutil.which("perf") or "perf"
        self._recording = subprocess.Popen(
            [perf, "record", "-q", "-e", "cpu-clock", "-p", str(self._pid), "-o", str(self._data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, Any]:
        assert self._recording is not None
        self._recording.send_signal(signal.SIGINT)
        try:
            self._recording.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._recording.kill()
            return {"perf_error": "perf record did not stop"}
        perf = shutil.which("perf") or "perf"
        report = subprocess.run(
            [perf, "report", "-i", str(self._data), "--sort", "dso", "--stdio", "-q"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        shares = parse_report(report.stdout)
        if not shares:
            return {"perf_error": f"perf report gave nothing: {report.stderr.strip()[-200:]}"}
        return {"perf_dso_shares": shares}


def parse_report(text: str) -> dict[str, float]:
    """`perf report --sort dso --stdio -q` lines (`  45.12%  libpython3.13.so.1.0`) as
    shares of the samples (0..1) by shared object."""
    shares: dict[str, float] = {}
    for line in text.splitlines():
        match = _REPORT_LINE.match(line)
        if match:
            dso = match.group(2)
            shares[dso] = shares.get(dso, 0.0) + float(match.group(1)) / 100
    return shares


def cpu_by_library(shares: dict[str, float], cpu_us_per_call: float) -> dict[str, float]:
    """The process's CPU per call split by LIBRARIES, in µs."""
    split = {label: 0.0 for label, _ in LIBRARIES}
    for dso, share in shares.items():
        for label, pattern in LIBRARIES:
            if re.search(pattern, dso):
                split[label] += share * cpu_us_per_call
                break
    return split


def gc_line(probe: dict[str, Any], calls: int) -> str:
    """`gen0 12 (longest 0.4 ms), gen1 ..., gen2 ...; 3.1 us/call` from a probe's figures."""
    collections = probe.get("gc", {})
    parts = []
    total_ms = 0.0
    for generation in ("0", "1", "2"):
        figures = collections.get(generation, {"count": 0, "longest_ms": 0.0, "total_ms": 0.0})
        total_ms += figures["total_ms"]
        parts.append(f"gen{generation} {figures['count']} (longest {figures['longest_ms']:.1f} ms)")
    return ", ".join(parts) + f"; {total_ms * 1e3 / max(1, calls):.1f} us/call"


def table(arms: dict[str, dict[str, Any]], *, rate: float, perf: str | None) -> list[str]:
    """The fixed-rate part: CPU per call by library, loop work and GC per call, one column
    per server."""
    names = list(arms)
    width = 11
    titles = {"bare": "bare mTLS", "meshgate": "meshgate", "meshgate_log_off": "log off"}
    lines = [
        f"in place at {rate:.0f} calls/s offered (open loop), one window per server:"
        + (
            " CPU per call split by `perf record -e cpu-clock` + `perf report --sort dso`"
            if perf is None
            else f" process CPU only ({perf})"
        ),
        f"{'':36}" + "".join(f"{titles.get(name, name):>{width}}" for name in names),
    ]

    def row(label: str, values: list[float], digits: int = 0) -> None:
        lines.append(f"{label:36}" + "".join(f"{v:>{width}.{digits}f}" for v in values))

    row("calls/s answered", [arms[n]["rps"] for n in names])
    row("p50 latency us", [arms[n]["p50_us"] for n in names])
    row("server CPU us/call", [arms[n]["cpu_us_per_request"] for n in names])
    if perf is None and all("perf_dso_shares" in arms[n] for n in names):
        split = {
            n: cpu_by_library(arms[n]["perf_dso_shares"], arms[n]["cpu_us_per_request"])
            for n in names
        }
        for label, _ in LIBRARIES:
            row(f"  {label}", [split[n][label] for n in names])
    for n in names:
        if "perf_error" in arms[n]:
            lines.append(f"  {n}: {arms[n]['perf_error']}")
    calls = {n: max(1, int(arms[n]["requests"])) for n in names}
    probes = {n: arms[n].get("probe", {}) for n in names}
    row(
        "loop iterations/call",
        [probes[n].get("loop_iterations", 0) / calls[n] for n in names],
        1,
    )
    row("loop callbacks/call", [probes[n].get("loop_callbacks", 0) / calls[n] for n in names], 1)
    row("objects the GC tracks", [probes[n].get("gc_objects", 0) for n in names])
    row("objects frozen (gc.freeze)", [probes[n].get("gc_frozen", 0) for n in names])
    row(
        "a full collection after it, ms",
        [probes[n].get("full_collection_ms", 0.0) for n in names],
        1,
    )
    for n in names:
        lines.append(f"GC pauses, {titles.get(n, n)}: {gc_line(probes[n], calls[n])}")
    return lines


def profile_table(name: str, *, stats: str, requests: int, top: int = 30) -> list[str]:
    """The largest items of a cProfile window: own time and cumulative time per call (µs;
    inflated by the profiler, so compare proportions), and Python calls per call."""
    profile = pstats.Stats(stats)
    per_call = max(1, requests)
    entries: dict[Any, Any] = profile.stats  # type: ignore[attr-defined]
    calls = sum(primitive for primitive, *_ in entries.values())
    lines = [
        f"cProfile of {name} ({stats}): {requests} calls, {calls / per_call:.0f} Python"
        " function calls per call; the largest by own time, µs per call:",
        f"{'own':>8}{'cumul.':>9}{'calls':>7}  function",
    ]
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, line, function), (primitive, _total, own, cumulative, _) in ranked:
        where = f"{Path(filename).name}:{line}" if line else filename
        lines.append(
            f"{own * 1e6 / per_call:>8.1f}{cumulative * 1e6 / per_call:>9.1f}"
            f"{primitive / per_call:>7.2f}  {function} ({where})"
        )
    return lines
