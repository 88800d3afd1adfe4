"""The grpcurl session of docs/tour.md, run as written against `meshgate serve --dev`
(embedded)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.cli import ROOT, cli_env, start_cli
from tests.support.log_guard import NEVER_LOGGED, PROCESS_LOGS
from tests.support.pki import Pki
from tests.support.processes import free_port, wait_until_healthy


def tour_session() -> str:
    text = (ROOT / "docs" / "tour.md").read_text()
    section = text.split("## A grpcurl session", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "docs/tour.md lost its grpcurl session"
    return match.group(1)


def test_the_tours_grpcurl_session_works(pki: Pki, tmp_path: Path) -> None:
    # a fresh checkout's view: .venv and certs/ as `make run` leaves them, an empty var/
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    shutil.copytree(pki.root, tmp_path / "certs")
    port = free_port()
    server = start_cli(
        *("serve", "--dev", "--listen", f"127.0.0.1:{port}"),
        env=cli_env(MESHGATE_METRICS_LISTEN="127.0.0.1:0"),
        log_path=tmp_path / "serve.log",
        cwd=tmp_path,
    )
    try:
        wait_until_healthy(f"localhost:{port}", pki, server, tmp_path / "serve.log")
        hook_port = free_port()
        script = "set -euo pipefail\n" + tour_session().replace(
            "localhost:50051", f"localhost:{port}"
        ).replace("127.0.0.1:8099", f"127.0.0.1:{hook_port}").replace(
            "receiver.py 8099", f"receiver.py {hook_port}"
        )
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        NEVER_LOGGED.add((tmp_path / "var/dev-admin-key").read_text().strip())
        PROCESS_LOGS.append(tmp_path / "serve.log")
        out, err = result.stdout, result.stderr
        assert "meshgate.v1.KeyService" in out and '"status": "SERVING"' in out
        assert '"name": "orders"' in out
        assert "Code: PermissionDenied" in err
        assert "Code: InvalidArgument" in err and "x-namespace" in err
        assert "Code: Unauthenticated" in err
        assert '"internal_id"' in out
        assert "KEY_STATE_REVOKED" in out
        assert '"document_id": "order-1"' in out and "Code: NotFound" in err
        assert "ratelimit-remaining:" in out and "Code: ResourceExhausted" in err
        assert '"calls_by_status"' in out and '"allowance": "1000000"' in out
        assert out.count('"upserted": 1') == 1 and out.count('"score"') == 1  # found in orders only
        # the ingestion task completed and its webhook arrived, signed
        assert "verified task.completed webhook-id: evt_" in out
        assert "TASK_STATE_COMPLETED" in out and "REFUSED" not in out
        assert "whsec_" in (tmp_path / "var" / "webhook.json").read_text()
    finally:
        server.terminate()
        server.wait(timeout=20)
