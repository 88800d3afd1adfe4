"""The `meshgate` command in-process: a bad setting stops `serve` before anything starts,
exit code 2 and one line naming the variable (the readers themselves: test_settings.py).
The command as a process: tests/server/test_cli.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.cli import main

LIMIT = {"per_second": 1, "burst": 1}
PLANS = {
    "test": {
        "monthly_credits": 1000,
        "limits": {name: LIMIT for name in ("metadata", "data", "search", "admin")},
    }
}


def serve_with(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str
) -> str:
    """`meshgate serve` with only `env` set; its exit code must be 2: what it printed."""
    for name in [n for n in os.environ if n.startswith("MESHGATE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    return captured.err


def test_a_bad_value_stops_serve_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = serve_with(monkeypatch, capsys, MESHGATE_KEY_CACHE_TTL_S="-5")
    assert err == "error: MESHGATE_KEY_CACHE_TTL_S must be at least 0, got '-5'\n"


def test_a_bad_route_policy_file_stops_serve_naming_the_route(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("routes:\n  - grpc: /a.B/C\n    permission: reed\n")
    err = serve_with(monkeypatch, capsys, MESHGATE_ROUTE_POLICY_FILE=str(bad))
    assert "MESHGATE_ROUTE_POLICY_FILE" in err
    assert "routes[0]: permission must be one of" in err


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"per_second": 0, "burst": 5}, id="zero rate"),
        pytest.param({"per_second": 1, "burst": -5}, id="negative burst"),
        pytest.param({"per_second": 1, "burst": 1.5}, id="fractional burst"),
    ],
)
def test_a_bad_plan_stops_serve_naming_the_limit(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    bad: dict[str, float],
) -> None:
    plans = json.loads(json.dumps(PLANS))
    plans["test"]["limits"]["search"] = bad
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    err = serve_with(
        monkeypatch, capsys, MESHGATE_PLANS_FILE=str(path), MESHGATE_DEFAULT_PLAN="test"
    )
    assert "MESHGATE_PLANS_FILE" in err and "limits.search" in err
