"""The alert rules compile and behave as their unit tests say (`promtool test rules`)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.processes import ROOT


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: `make test-deps` installs it (Debian's packages) as root")
    return found


def test_rules_are_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ROOT / "server/alerts/meshgate.rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 rules found" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "meshgate.rules.test.yml"],
        cwd=ROOT / "tests/alerts",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
