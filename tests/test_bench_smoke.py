"""`python -m tests.bench --smoke` end to end, so the benchmark harness cannot rot.

No speed is asserted: speed is tracked by `make bench`, never by a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT


def test_bench_smoke_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert set(data["loaded"]["median"]) == {
        "bare",
        "meshgate",
        "meshgate_log_off",
        "ratio",
        "ratio_log_off",
        "check",
        "ratio_check",
        "check_vs_direct",
    }
    assert data["loaded"]["median"]["meshgate_log_off"]["rps"] > 0
    assert data["loaded"]["median"]["meshgate"]["rps"] > 0
    assert data["loaded"]["median"]["meshgate"]["cpu_us_per_request"] > 0
    for arm in ("bare", "meshgate", "meshgate_log_off"):
        figures = data["loaded"]["median"][arm]
        assert 0 < figures["p99_us"] <= figures["p999_us"] <= figures["max_us"]
        # the collector's pauses, seen in the server's process over the measured windows
        assert data["loaded"]["gc"][arm]["calls"] > 0
        assert set(data["loaded"]["gc"][arm]["gc"]) <= {"0", "1", "2"}
    # the fixed-rate part: loop work per call, and `meshgate serve` froze its start-up heap
    in_place = data["in_place"]["arms"]
    assert set(in_place) == {"bare", "meshgate", "meshgate_log_off"}
    for arm in in_place.values():
        assert arm["probe"]["loop_callbacks"] > 0 and arm["probe"]["loop_iterations"] > 0
    assert in_place["meshgate"]["probe"]["gc_frozen"] > 100_000
    assert in_place["bare"]["probe"]["gc_frozen"] == 0
    assert in_place["meshgate"]["probe"]["full_collection_ms"] > 0
    assert "in place at 500 calls/s" in result.stdout and "GC pauses" in result.stdout
    assert "p99.9 latency us" in result.stdout and "max latency us" in result.stdout
    assert "max latency / p99 at 32 in flight" in result.stdout
    # the default configuration writes its access log to a file
    assert data["loaded"]["access_log_bytes"] > 0
    assert data["unloaded"]["meshgate_p50_us"] > 0
    assert data["unloaded"]["meshgate_log_off_p50_us"] > 0
    assert data["loaded"]["median"]["check"]["cpu_us_per_request"] > 0
    assert data["cold"]["revocation_samples"] == 3
    assert data["workers"]["2"]["rps"] > 0
    assert data["workers"]["open_1"]["cpu_us_per_request"] > 0
    assert data["workers"]["open_2"]["cpu_us_per_request"] > 0
    assert data["workers"]["idle_cpu_ms_per_s_2"] >= 0
    assert data["webhooks"]["deliveries"] == 3
    assert (
        0 < data["webhooks"]["p50_ms"] <= data["webhooks"]["p95_ms"] <= data["webhooks"]["max_ms"]
    )
    assert "requests/s" in result.stdout and "revocation propagation" in result.stdout
    assert "log off" in result.stdout and "open loop" in result.stdout
    assert "webhook delivery submit -> delivered over 3 tasks" in result.stdout
    assert data["load"]["documents"] == 500
    assert data["load"]["per_document_first_batches_ms"] > 0
    assert data["load"]["end"]["get_ms"] > 0
    assert "load: 500 documents" in result.stdout
    assert data["backup"]["items"] == 400
    assert data["backup"]["export_items_per_s"] > 0 and data["backup"]["import_items_per_s"] > 0
    assert "backup of 200 documents + 200 points" in result.stdout
