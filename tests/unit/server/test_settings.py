"""Settings: environment variables, *_FILE secrets, masking, refusal of bad values."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from server.logs import GuardedJsonFormatter
from server.settings import Settings, SettingsError
from storage.core.checkpoints import generate_key


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.insecure is False
    assert settings.mongodb_uri is None and settings.redis_url is None
    assert settings.drain_delay_s == 5.0
    assert Settings.from_env({"MESHGATE_DRAIN_DELAY_S": "0"}).drain_delay_s == 0.0


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
        ({"MESHGATE_DRAIN_DELAY_S": "-1"}, "MESHGATE_DRAIN_DELAY_S"),
        ({"MESHGATE_INSECURE": "maybe"}, "MESHGATE_INSECURE"),
        ({"MESHGATE_REDIS_CLUSTER": "true"}, "MESHGATE_REDIS_CLUSTER needs MESHGATE_REDIS_URL"),
        (
            {"MESHGATE_MONGODB_URI": "mongodb://db/?replicaSet=rs0&readPreference=secondary"},
            "MESHGATE_MONGODB_URI: readPreference must be primary",
        ),
        ({"MESHGATE_REDIS_CLUSTER": "sometimes"}, "MESHGATE_REDIS_CLUSTER"),
        ({"MESHGATE_QDRANT_SHARD_NUMBER": "0"}, "MESHGATE_QDRANT_SHARD_NUMBER must be between 1"),
        (
            {
                "MESHGATE_QDRANT_REPLICATION_FACTOR": "2",
                "MESHGATE_QDRANT_WRITE_CONSISTENCY_FACTOR": "3",
            },
            "MESHGATE_QDRANT_WRITE_CONSISTENCY_FACTOR cannot exceed",
        ),
        ({"MESHGATE_LISTEN": "50051"}, "MESHGATE_LISTEN"),
        ({"MESHGATE_MONGODB_URI_FILE": "/nonexistent/file"}, "MESHGATE_MONGODB_URI_FILE"),
        ({"MESHGATE_TASK_WORKERS": "2.5"}, "MESHGATE_TASK_WORKERS must be a whole number"),
        ({"MESHGATE_TASK_WORKERS": "-1"}, "MESHGATE_TASK_WORKERS must be between 0 and 64"),
        ({"MESHGATE_TASK_LEASE_S": "0.1"}, "MESHGATE_TASK_LEASE_S"),
        ({"MESHGATE_TASK_LEASE_S": "nan"}, "MESHGATE_TASK_LEASE_S"),
        ({"MESHGATE_TASK_MAX_ATTEMPTS": "0"}, "MESHGATE_TASK_MAX_ATTEMPTS"),
        ({"MESHGATE_WORK_POLL_S": "0"}, "MESHGATE_WORK_POLL_S"),
        ({"MESHGATE_WEBHOOK_WORKERS": "many"}, "MESHGATE_WEBHOOK_WORKERS"),
        (
            {"MESHGATE_WEBHOOK_RETRY_SCHEDULE": "5s,10"},
            "MESHGATE_WEBHOOK_RETRY_SCHEDULE: '10' needs",
        ),
        ({"MESHGATE_WEBHOOK_RETRY_SCHEDULE": "5s,-1m"}, "must be positive"),
        ({"MESHGATE_WEBHOOK_RETRY_SCHEDULE": ",".join(["1s"] * 21)}, "at most 20 steps"),
        ({"MESHGATE_WEBHOOK_JITTER": "1.5"}, "MESHGATE_WEBHOOK_JITTER"),
        ({"MESHGATE_WEBHOOK_TIMEOUT_S": "0"}, "MESHGATE_WEBHOOK_TIMEOUT_S"),
        (
            {"MESHGATE_WEBHOOK_ALLOWED_HOSTS": "ok.example,bad host"},
            "MESHGATE_WEBHOOK_ALLOWED_HOSTS",
        ),
        (
            {"MESHGATE_WEBHOOK_SECRET_KEY": "c2hvcnQ="},
            "MESHGATE_WEBHOOK_SECRET_KEY must be 32 bytes",
        ),
        ({"MESHGATE_WEBHOOK_CA_FILE": "/nonexistent/ca.pem"}, "MESHGATE_WEBHOOK_CA_FILE"),
        ({"MESHGATE_PAGE_TOKEN_KEYS": "c2hvcnQ="}, "MESHGATE_PAGE_TOKEN_KEYS must be"),
        ({"MESHGATE_PAGE_TOKEN_KEYS": "not base64!"}, "MESHGATE_PAGE_TOKEN_KEYS must be"),
        ({"MESHGATE_PAGE_TOKEN_KEYS": " , "}, "MESHGATE_PAGE_TOKEN_KEYS must be"),
        ({"MESHGATE_SPOOL_DIR": "/nonexistent/spool"}, "MESHGATE_SPOOL_DIR: /nonexistent"),
        ({"MESHGATE_IMPORT_MAX_BYTES": "1000"}, "MESHGATE_IMPORT_MAX_BYTES must be between"),
        ({"MESHGATE_IMPORT_MAX_ITEMS": "0"}, "MESHGATE_IMPORT_MAX_ITEMS must be between"),
        ({"MESHGATE_IMPORT_CONCURRENCY": "65"}, "MESHGATE_IMPORT_CONCURRENCY must be between"),
        ({"MESHGATE_IMPORT_DEADLINE_S": "0"}, "MESHGATE_IMPORT_DEADLINE_S"),
        ({"MESHGATE_BACKUP_IDLE_S": "nan"}, "MESHGATE_BACKUP_IDLE_S"),
    ],
)
def test_bad_settings_are_refused_with_their_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_task_and_webhook_settings(tmp_path: Path) -> None:
    defaults = Settings.from_env({})
    assert defaults.task_workers == 2 and defaults.webhook_workers == 4
    assert sum(defaults.webhook_retry_schedule) > 24 * 3600  # retries span more than a day
    assert defaults.webhook_allowed_hosts == frozenset() and defaults.webhook_secret_key is None
    key_file = tmp_path / "key"
    key_file.write_text("a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    settings = Settings.from_env(
        {
            "MESHGATE_TASK_WORKERS": "0",
            "MESHGATE_WEBHOOK_RETRY_SCHEDULE": "250ms, 2s,1m,1h,1d",
            "MESHGATE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1, Hooks.Internal,10.0.0.0/8",
            "MESHGATE_WEBHOOK_SECRET_KEY_FILE": str(key_file),
            "MESHGATE_WEBHOOK_CA_FILE": str(ca),
        }
    )
    assert settings.task_workers == 0
    assert settings.webhook_retry_schedule == (0.25, 2.0, 60.0, 3600.0, 86400.0)
    assert settings.webhook_allowed_hosts == {"127.0.0.1", "hooks.internal", "10.0.0.0/8"}
    assert settings.webhook_sealing_key() == b"keykeykeykeykeykeykeykeykeykeyke"
    assert "a2V5" not in repr(settings)


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


def test_page_token_keys_from_file_signing_key_first(tmp_path: Path) -> None:
    assert Settings.from_env({}).page_token_key_list() is None  # the key kept in MongoDB
    keys = tmp_path / "page-keys"
    keys.write_text(f"{'MjIy' * 11}, {'MTEx' * 11}\n")  # base64 of 33 "2"s, then of 33 "1"s
    settings = Settings.from_env({"MESHGATE_PAGE_TOKEN_KEYS_FILE": str(keys)})
    assert settings.page_token_key_list() == (b"2" * 33, b"1" * 33)
    assert "MjIy" not in repr(settings)


def test_sealing_keys_by_id_primary_first_and_the_single_key_as_default(tmp_path: Path) -> None:
    k1, k2 = base64.b64encode(b"1" * 32).decode(), base64.b64encode(b"2" * 32).decode()
    keys_file = tmp_path / "sealing"
    keys_file.write_text(f"k2:{k2}, k1:{k1}\n")
    settings = Settings.from_env({"MESHGATE_WEBHOOK_SECRET_KEYS_FILE": str(keys_file)})
    assert settings.webhook_sealing_keys() == (("k2", b"2" * 32), ("k1", b"1" * 32))
    assert k2 not in repr(settings)
    single = Settings.from_env({"MESHGATE_WEBHOOK_SECRET_KEY": k1})
    assert single.webhook_sealing_keys() == (("default", b"1" * 32),)
    for bad in (f"k1:{k1},k1:{k2}", f"k1{k1}", "k1:c2hvcnQ=", f"bad id:{k1}"):
        with pytest.raises(SettingsError, match="MESHGATE_WEBHOOK_SECRET_KEYS"):
            Settings.from_env({"MESHGATE_WEBHOOK_SECRET_KEYS": bad})
    with pytest.raises(SettingsError, match="both set"):
        Settings.from_env(
            {"MESHGATE_WEBHOOK_SECRET_KEYS": f"k1:{k1}", "MESHGATE_WEBHOOK_SECRET_KEY": k1}
        )


def test_audit_checkpoint_keys_from_file_signing_key_first(tmp_path: Path) -> None:
    """The `_FILE` variant, one key a line; a bad key stops the server naming the variable,
    never echoing the key; the sinks are `log` and existing directories."""
    assert Settings.from_env({}).checkpoint_keys() is None
    current, previous = generate_key("audit.example.com"), generate_key("audit.example.com")
    keys_file = tmp_path / "checkpoint-keys"
    keys_file.write_text(f"{current.encoded()}\n{previous.verifier().encoded()}\n")
    settings = Settings.from_env(
        {
            "MESHGATE_AUDIT_CHECKPOINT_KEYS_FILE": str(keys_file),
            "MESHGATE_AUDIT_CHECKPOINT_SINKS": f"log,file:{tmp_path}",
            "MESHGATE_AUDIT_CHECKPOINT_INTERVAL_S": "5",
        }
    )
    keys = settings.checkpoint_keys()
    assert keys is not None and keys.signer.key_id == current.key_id
    assert [v.key_id for v in keys.verifiers] == [current.key_id, previous.key_id]
    assert settings.audit_checkpoint_sinks == ("log", f"file:{tmp_path}")
    assert current.encoded() not in repr(settings)
    seed = current.encoded().rsplit("+", 1)[1]
    for bad in (previous.verifier().encoded(), current.encoded()[:-2], "PRIVATE+KEY+x"):
        with pytest.raises(SettingsError, match="MESHGATE_AUDIT_CHECKPOINT_KEYS") as info:
            Settings.from_env({"MESHGATE_AUDIT_CHECKPOINT_KEYS": bad})
        assert seed not in str(info.value)
    for sinks in ("file:/nonexistent", "webhook", "log,log", " , "):
        with pytest.raises(SettingsError, match="MESHGATE_AUDIT_CHECKPOINT_SINKS"):
            Settings.from_env({"MESHGATE_AUDIT_CHECKPOINT_SINKS": sinks})
    with pytest.raises(SettingsError, match="MESHGATE_MAX_KEYS_PER_ORGANIZATION"):
        Settings.from_env({"MESHGATE_MAX_KEYS_PER_ORGANIZATION": "0"})


def test_backup_limits(tmp_path: Path) -> None:
    """What one import or export may cost (docs/backup.md#limits), and where imports spool."""
    defaults = Settings.from_env({}).backups
    assert defaults.spool_dir is None  # the system's temporary directory
    assert (defaults.import_max_bytes, defaults.import_concurrency) == (2**30, 2)
    assert defaults.import_max_messages == 131_072
    limits = Settings.from_env(
        {
            "MESHGATE_SPOOL_DIR": str(tmp_path),
            "MESHGATE_IMPORT_MAX_BYTES": str(2**20),
            "MESHGATE_IMPORT_MAX_INFLATED_BYTES": str(2**21),
            "MESHGATE_IMPORT_MAX_ITEMS": "10",
            "MESHGATE_IMPORT_DEADLINE_S": "60",
            "MESHGATE_IMPORT_CONCURRENCY": "1",
            "MESHGATE_EXPORT_DEADLINE_S": "120",
            "MESHGATE_BACKUP_IDLE_S": "5",
        }
    ).backups
    assert limits.spool_dir == tmp_path
    assert (limits.import_max_bytes, limits.import_max_inflated_bytes) == (2**20, 2**21)
    assert (limits.import_max_items, limits.import_concurrency) == (10, 1)
    assert (limits.import_deadline_s, limits.export_deadline_s, limits.idle_s) == (60, 120, 5)
    assert limits.import_max_messages == 128
