"""Readers of the settings that are made of several variables, or that are checked against
the machine (a directory that must exist, a network policy that must parse): each returns
a value of the `Settings` table (server/settings.py) or raises SettingsError naming the
variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from server.env_values import (
    SettingsError,
    listed,
    number,
    optional_int,
    parse_durations,
    whole_number,
)
from storage.data.backup_limits import BackupLimits
from storage.data.vectors import CollectionLayout
from storage.webhooks.targets import TargetPolicy

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "MAX_RETRY_STEPS",
    "allowed_hosts",
    "backup_limits",
    "checkpoint_sinks",
    "collection_layout",
    "retry_schedule",
    "spool_dir",
    "webhook_jitter",
]

# Delays after each failed webhook attempt: 8 attempts over about 27.6 hours.
DEFAULT_RETRY_SCHEDULE = "5s,5m,30m,2h,5h,10h,10h"
MAX_RETRY_STEPS = 20


def collection_layout(env: Mapping[str, str]) -> CollectionLayout:
    layout = CollectionLayout(
        shard_number=optional_int(env, "MESHGATE_QDRANT_SHARD_NUMBER", maximum=1024),
        replication_factor=optional_int(env, "MESHGATE_QDRANT_REPLICATION_FACTOR", maximum=64),
        write_consistency_factor=optional_int(
            env, "MESHGATE_QDRANT_WRITE_CONSISTENCY_FACTOR", maximum=64
        ),
    )
    if (layout.write_consistency_factor or 1) > (layout.replication_factor or 1):
        raise SettingsError(
            "MESHGATE_QDRANT_WRITE_CONSISTENCY_FACTOR cannot exceed"
            " MESHGATE_QDRANT_REPLICATION_FACTOR (a write cannot wait for more replicas than exist)"
        )
    return layout


def retry_schedule(env: Mapping[str, str]) -> tuple[float, ...]:
    name = "MESHGATE_WEBHOOK_RETRY_SCHEDULE"
    raw = env.get(name) or DEFAULT_RETRY_SCHEDULE
    try:
        delays = parse_durations(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    if len(delays) > MAX_RETRY_STEPS:
        raise SettingsError(f"{name} may have at most {MAX_RETRY_STEPS} steps")
    return delays


def allowed_hosts(env: Mapping[str, str]) -> frozenset[str]:
    name = "MESHGATE_WEBHOOK_ALLOWED_HOSTS"
    entries = listed(env, name)
    try:
        TargetPolicy.from_entries(entries)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return frozenset(e.lower() for e in entries)


def checkpoint_sinks(env: Mapping[str, str]) -> tuple[str, ...]:
    """`log` and/or `file:<directory>` (an existing directory), comma-separated."""
    name = "MESHGATE_AUDIT_CHECKPOINT_SINKS"
    sinks = tuple(e.strip() for e in (env.get(name) or "log").split(",") if e.strip())
    for sink in sinks:
        if sink == "log":
            continue
        directory = sink.removeprefix("file:")
        if not sink.startswith("file:") or not Path(directory).is_dir():
            raise SettingsError(f"{name}: {sink!r} is neither `log` nor `file:<a directory>`")
    if not sinks or len(set(sinks)) != len(sinks):
        raise SettingsError(f"{name} must list `log` and/or `file:<directory>`, each once")
    return sinks


def spool_dir(env: Mapping[str, str]) -> Path | None:
    raw = env.get("MESHGATE_SPOOL_DIR")
    if not raw:
        return None
    path = Path(raw)
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"MESHGATE_SPOOL_DIR: {raw} is not a writable directory")
    return path


def backup_limits(env: Mapping[str, str]) -> BackupLimits:
    """What one namespace import or export may cost (docs/backup.md#limits)."""
    return BackupLimits(
        import_max_bytes=whole_number(
            env, "MESHGATE_IMPORT_MAX_BYTES", 1024**3, minimum=2**20, maximum=2**40
        ),
        import_max_inflated_bytes=whole_number(
            env, "MESHGATE_IMPORT_MAX_INFLATED_BYTES", 8 * 1024**3, minimum=2**20, maximum=2**44
        ),
        import_max_items=whole_number(
            env, "MESHGATE_IMPORT_MAX_ITEMS", 1_000_000, minimum=1, maximum=10**9
        ),
        import_deadline_s=number(env, "MESHGATE_IMPORT_DEADLINE_S", 1800.0, minimum=1),
        import_concurrency=whole_number(
            env, "MESHGATE_IMPORT_CONCURRENCY", 2, minimum=1, maximum=64
        ),
        export_deadline_s=number(env, "MESHGATE_EXPORT_DEADLINE_S", 1800.0, minimum=1),
        idle_s=number(env, "MESHGATE_BACKUP_IDLE_S", 60.0, minimum=1),
        spool_dir=spool_dir(env),
    )


def webhook_jitter(env: Mapping[str, str]) -> float:
    value = number(env, "MESHGATE_WEBHOOK_JITTER", 0.2, minimum=0)
    if value >= 1:
        raise SettingsError("MESHGATE_WEBHOOK_JITTER must be below 1 (a fraction of each delay)")
    return value
