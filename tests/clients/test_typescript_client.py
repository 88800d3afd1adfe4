"""The TypeScript client of buf.gen.yaml, used by Node against a live `meshgate serve --dev`.

`make clients` generates the client into build/clients/typescript with the pinned npm
packages (clients/typescript/package-lock.json); node_client.mjs then calls the server over
mTLS with Connect-ES's gRPC transport: a call, whose `x-request-id` trailer it reads, and
refusals whose `google.rpc.ErrorInfo` reason it reads from the error details.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import cli_env, start_cli
from tests.support.log_guard import NEVER_LOGGED, PROCESS_LOGS
from tests.support.pki import Pki
from tests.support.processes import ROOT, wait_until_healthy
from tests.support.waiting import wait_until

CLIENT = ROOT / "build" / "clients" / "typescript"
SCRIPT = Path(__file__).with_name("node_client.mjs")


@pytest.fixture(scope="module")
def generated_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js 20 or later (node, npm) is needed for the TypeScript client test")
    result = subprocess.run(
        ["make", "-s", "clients"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (CLIENT / "gen" / "meshgate" / "v1" / "namespace_service_pb.d.ts").is_file()
    assert (CLIENT / "gen" / "google" / "rpc" / "error_details_pb.js").is_file()
    return CLIENT


@pytest.fixture
def dev_server(pki: Pki, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`meshgate serve --dev --listen 127.0.0.1:0` in a directory of its own (certs/ and
    var/ there, as `make run` leaves them): (target, the dev ADMIN key's file)."""
    shutil.copytree(pki.root, tmp_path / "certs")
    log_path = tmp_path / "serve.log"
    server = start_cli(
        *("serve", "--dev", "--listen", "127.0.0.1:0"),
        env=cli_env(MESHGATE_METRICS_LISTEN="127.0.0.1:0"),
        log_path=log_path,
        cwd=tmp_path,
    )
    PROCESS_LOGS.append(log_path)
    try:
        ports: list[str] = []

        def announced() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"meshgate exited early:\n{log_path.read_text()}")
            ports[:] = re.findall(
                r"meshgate is serving on 127\.0\.0\.1:(\d+)\.", log_path.read_text()
            )
            return bool(ports)

        wait_until(announced, timeout_s=120, failure=log_path.read_text)
        target = f"localhost:{ports[0]}"
        wait_until_healthy(target, pki, server, log_path)
        key_file = tmp_path / "var" / "dev-admin-key"
        NEVER_LOGGED.add(key_file.read_text().strip())
        yield target, key_file
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_node_service_calls_meshgate_with_the_generated_client(
    generated_client: Path, dev_server: tuple[str, Path], pki: Pki, tmp_path: Path
) -> None:
    target, key_file = dev_server
    workdir = tmp_path / "node"
    workdir.mkdir()
    shutil.copy(SCRIPT, workdir / SCRIPT.name)
    (workdir / "node_modules").symlink_to(generated_client / "node_modules")
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, SCRIPT.name],
        cwd=workdir,
        env={
            "MESHGATE_TARGET": target,
            "MESHGATE_CLIENT": str(generated_client),
            "MESHGATE_KEY_FILE": str(key_file),
            "MESHGATE_TLS_DIR": str(pki.root),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print("\n" + result.stdout)
    lines: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    created, bad_key, no_namespace, unknown = lines
    assert created["call"] == "CreateNamespace" and created["name"] == "from-node"
    assert created["namespace_id"].startswith("ns_")
    assert created["x_request_id"] == "node-req-1"
    assert bad_key["code"] == "Unauthenticated"
    assert (bad_key["domain"], bad_key["reason"]) == ("meshgate", "API_KEY_INVALID")
    assert bad_key["message"] == "missing or invalid API key" and bad_key["metadata"] == {}
    assert bad_key["x_request_id"] == bad_key["request_info"] and bad_key["x_request_id"]
    assert no_namespace["code"] == "InvalidArgument"
    assert no_namespace["reason"] == "NAMESPACE_MISSING"
    assert no_namespace["metadata"] == {"header": "x-namespace"}
    assert no_namespace["x_request_id"] == no_namespace["request_info"] == "node-req-2"
    assert (unknown["code"], unknown["reason"]) == ("NotFound", "NAMESPACE_NOT_FOUND")
