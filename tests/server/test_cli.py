"""`meshgate` as operators run it: a process of its own. A bad setting ends it with exit
code 2 and one line naming the variable, no traceback (each reader's refusals, and the
command's, in-process: tests/unit/server/test_cli.py and test_settings.py)."""

from __future__ import annotations

from tests.support.cli import cli_env, run_cli


def test_serve_refuses_bad_settings_at_start() -> None:
    result = run_cli("serve", env=cli_env(MESHGATE_KEY_CACHE_TTL_S="-5"))
    assert result.returncode == 2
    assert result.stderr == "error: MESHGATE_KEY_CACHE_TTL_S must be at least 0, got '-5'\n"
