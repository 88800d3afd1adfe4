"""The policy-file watcher on its own, on real files: a file over 1 MiB, or one that
vanishes mid-update, never replaces the policy in force; the content in force coming back
clears the refusal. (The live server's reloads: test_policy_reload.py.)"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from interceptors.sidecar.routes import RoutePolicies
from server.policy_files import PolicyFiles, WatchedFile, digest_of
from server.sidecar_files import MAX_FILE_BYTES, ROUTE_POLICY_FILE

ROUTES = {"routes": [{"grpc": "/shop.v1.Cart/*", "permission": "read"}]}


async def test_an_oversized_or_vanished_file_leaves_the_policy_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.policy")
    path = tmp_path / "routes.yaml"
    good = yaml.safe_dump(ROUTES).encode()
    path.write_bytes(good)
    applied: list[RoutePolicies] = []

    def count(routes: Any) -> str:
        return f"{len(routes)} routes"

    watched = WatchedFile(
        setting=ROUTE_POLICY_FILE.setting,
        label="route_policy",
        path=path,
        load=ROUTE_POLICY_FILE.parse,
        apply=applied.append,
        entries=count,
    )
    files = PolicyFiles([watched])
    await files.check()
    assert len(applied) == 1 and watched.digest == digest_of(good) and watched.reloads == 0
    # over 1 MiB: refused unread beyond the cap, the policy in force stays
    path.write_bytes(good + b"#" * MAX_FILE_BYTES)
    await files.check()
    await files.check()
    assert len(applied) == 1 and watched.refused and watched.failures == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"is larger than {MAX_FILE_BYTES} bytes" in errors[0]
    # gone (a swap half done, a volume unmounted): a warning once, nothing changes
    path.unlink()
    await files.check()
    await files.check()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot read" in warnings[0]
    # the content in force is back: the refusal clears, nothing is applied again
    path.write_bytes(good)
    await files.check()
    assert len(applied) == 1 and not watched.refused and watched.reloads == 0
