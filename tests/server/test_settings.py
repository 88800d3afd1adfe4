"""Settings: environment variables, *_FILE secrets, masking, refusal of bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.logs import GuardedJsonFormatter
from server.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.insecure is False
    assert settings.mongodb_uri is None and settings.redis_url is None


def test_secret_from_file_and_masked(tmp_path: Path) -> None:
    secret_file = tmp_path / "uri"
    secret_file.write_text("mongodb://user:hunter2@db:27017\n")
    settings = Settings.from_env(
        {"MESHGATE_MONGODB_URI_FILE": str(secret_file), "MESHGATE_REDIS_URL": "redis://:pw@r"}
    )
    assert (
        settings.mongodb_uri is not None
        and settings.mongodb_uri.reveal() == "mongodb://user:hunter2@db:27017"
    )
    assert "hunter2" not in repr(settings)
    assert ":pw@" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MESHGATE_ENVIRONMENTS": "prod"}, "MESHGATE_ENVIRONMENTS"),
        ({"MESHGATE_KEY_CACHE_TTL_S": "-1"}, "MESHGATE_KEY_CACHE_TTL_S"),
        ({"MESHGATE_SHUTDOWN_GRACE_S": "soon"}, "MESHGATE_SHUTDOWN_GRACE_S"),
        ({"MESHGATE_INSECURE": "maybe"}, "MESHGATE_INSECURE"),
        ({"MESHGATE_LISTEN": "50051"}, "MESHGATE_LISTEN"),
        ({"MESHGATE_MONGODB_URI_FILE": "/nonexistent/file"}, "MESHGATE_MONGODB_URI_FILE"),
    ],
)
def test_bad_settings_are_refused_with_their_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_command_refuses_bad_settings_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        env={
            "MESHGATE_KEY_CACHE_TTL_S": "-5",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": ":".join(sys.path),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "MESHGATE_KEY_CACHE_TTL_S must be at least 0" in result.stderr


def test_log_formatter_refuses_secrets_and_internal_ids() -> None:
    import logging

    formatter = GuardedJsonFormatter()
    record = logging.LogRecord(
        "t",
        logging.INFO,
        __file__,
        1,
        "key %s for %s",
        ("mg_prod_" + "A" * 40 + "_abcdef", "9b2f4a9e-1c1d-4e0f-8a43-3f2d1f0c9e11"),
        None,
    )
    record.internal_id = "9b2f4a9e-1c1d-4e0f-8a43-3f2d1f0c9e11"
    record.note = "Bearer mg_dev_xyz and whsec_abc123"
    line = formatter.format(record)
    assert "mg_prod_" not in line and "mg_dev_" not in line and "whsec_" not in line
    assert "9b2f4a9e" not in line
    assert '"internal_id":"[refused]"' in line
