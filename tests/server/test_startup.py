"""Starting the real `meshgate` command as an operator does: engines chosen, never fallen into;
failures in one readable line with a documented exit code (docs/operations.md, Commands);
the bound port, the version and the embedded MongoDB engine in a process of its own."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import cli
from server.backends import mongo_only
from server.settings import Settings, SettingsError
from server.stores import mongodb_location, qdrant_location, redis_location, require_store_urls
from tests.support.cli import run_cli, start_cli
from tests.support.log_guard import NEVER_LOGGED, PROCESS_LOGS
from tests.support.pki import Pki
from tests.support.processes import free_port, replica_env, wait_until_healthy
from tests.support.waiting import wait_until

URL_SETTINGS = ("MESHGATE_MONGODB_URI", "MESHGATE_REDIS_URL", "MESHGATE_QDRANT_URL")


def run_meshgate(
    *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed `meshgate` command, as an operator runs it."""
    return run_cli(*args, env=env, cwd=cwd, timeout_s=timeout_s, installed=True)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    env.update(values)
    return env


@pytest.mark.parametrize("missing", URL_SETTINGS)
def test_serve_without_dev_needs_every_store_url(tmp_path: Path, pki: Pki, missing: str) -> None:
    """With the `embedded` extra installed (as here) and no --dev, a store without its URL is
    refused at once, Qdrant's included: no engine is fallen into."""
    urls = {
        "MESHGATE_MONGODB_URI": "mongodb://127.0.0.1:1/?directConnection=true",
        "MESHGATE_REDIS_URL": "redis://127.0.0.1:1/0",
        "MESHGATE_QDRANT_URL": "http://127.0.0.1:1",
    }
    given = {k: v for k, v in urls.items() if k != missing}
    result = run_meshgate(
        "serve",
        env=clean_env(
            **given,
            MESHGATE_DATA_DIR=str(tmp_path / "var"),
            MESHGATE_TLS_CERT=str(pki.path("server.pem")),
            MESHGATE_TLS_KEY=str(pki.path("server-key.pem")),
            MESHGATE_TLS_CLIENT_CA=str(pki.path("ca.pem")),
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == result.stderr.strip().splitlines()
    (line,) = error_lines(result.stderr)
    assert [name for name in URL_SETTINGS if name in line] == [missing], line
    assert "--dev" in line and "docs/operations.md" in line
    assert not (tmp_path / "var").exists()  # nothing was started, nothing written


def test_every_missing_store_url_is_named_in_one_line() -> None:
    with pytest.raises(SettingsError) as raised:
        require_store_urls(Settings())
    assert str(raised.value).startswith(
        "MESHGATE_MONGODB_URI, MESHGATE_REDIS_URL and MESHGATE_QDRANT_URL are not set:"
    )
    with pytest.raises(SettingsError, match=r"^MESHGATE_MONGODB_URI and MESHGATE_REDIS_URL are"):
        require_store_urls(Settings(), with_qdrant=False)


async def test_bootstrap_needs_mongodb_s_url_unless_dev() -> None:
    with pytest.raises(SettingsError, match=r"^MESHGATE_MONGODB_URI is not set: `meshgate boot"):
        async with mongo_only(Settings()):
            pass


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (
            mongodb_location("mongodb://app:s3cret@db-0:27017,db-1/meshgate?replicaSet=rs0"),
            "db-0:27017,db-1:27017",
        ),
        (
            mongodb_location("mongodb+srv://app:s3cret@cluster.example.com/?tls=true"),
            "cluster.example.com (DNS SRV record)",
        ),
        (mongodb_location("mongodb://%2Ftmp%2Fmongodb-27017.sock"), "/tmp/mongodb-27017.sock"),
        (redis_location("redis://:s3cret@cache:6380/0", cluster=False), "cache:6380"),
        (redis_location("rediss://user:s3cret@cache/0", cluster=False), "cache:6379 (TLS)"),
        (
            redis_location("redis://node-0", cluster=True),
            "node-0:6379 (a node of the Redis Cluster)",
        ),
        (redis_location("unix:///run/redis.sock", cluster=False), "/run/redis.sock"),
        (
            qdrant_location("http://qdrant.stores.svc:6333"),
            "qdrant.stores.svc:6334 (gRPC; REST at qdrant.stores.svc:6333)",
        ),
    ],
)
def test_where_a_store_is_says_no_credentials(location: str, expected: str) -> None:
    assert location == expected


@pytest.fixture
def serve_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """`meshgate serve` on the session's stores, as the replicas run it."""
    env = replica_env(settings, free_port(), MESHGATE_DATA_DIR=str(tmp_path))
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    return env


def test_an_unreachable_mongodb_is_one_line_and_exit_code_3(
    serve_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    serve_env.update(
        MESHGATE_MONGODB_URI=f"mongodb://meshgate:hunter2@127.0.0.1:{port}/?directConnection=true",
        MESHGATE_STARTUP_WAIT_S="0",  # fail fast: one attempt
        MESHGATE_BACKEND_TIMEOUT_S="1",
    )
    result = run_meshgate("serve", env=serve_env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: MongoDB at 127.0.0.1:{port} is unreachable: connection refused")
    assert "(ping, 1 attempt" in line and "MESHGATE_STARTUP_WAIT_S" in line
    assert f"store: MongoDB at 127.0.0.1:{port}, database " in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_a_redis_down_from_the_start_is_logged_at_once_and_again_then_exit_code_3(
    serve_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    serve_env.update(
        MESHGATE_REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0",
        MESHGATE_STARTUP_WAIT_S="2.5",
        MESHGATE_STORE_DOWN_LOG_S="1",
    )
    result = run_meshgate("serve", env=serve_env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    stores = [r["message"] for r in records if r["message"].startswith("store: ")]
    assert f"store: Redis at 127.0.0.1:{port}" in stores  # named before waiting for it
    down = [r for r in records if r["logger"] == "meshgate.startup"]
    assert len(down) >= 2, result.stderr
    first, *again = down
    assert first["level"] == "WARNING"
    assert first["message"].startswith(f"Redis at 127.0.0.1:{port} is unreachable (PING:")
    assert "connection refused" in first["message"] and "waiting up to 2.5s" in first["message"]
    assert all("is still unreachable after" in r["message"] for r in again)
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: Redis at 127.0.0.1:{port} is unreachable: connection refused")
    assert "(PING, " in line and " attempts over " in line
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_a_missing_certificate_is_one_line_naming_the_setting_and_the_file(
    serve_env: dict[str, str], tmp_path: Path
) -> None:
    """The other bad TLS files (not PEM, a foreign key, an empty CA) take the same path:
    tests/server/test_tls.py checks their lines in process."""
    missing = tmp_path / "server.pem"
    serve_env["MESHGATE_TLS_CERT"] = str(missing)
    result = run_meshgate("serve", env=serve_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: MESHGATE_TLS_CERT: cannot read {missing}: No such file or directory"
    ]


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (Z: exited, not yet reaped), None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def ended(pid: int) -> bool:
    return process_state(pid) in (None, "Z")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def loads_engine(pid: int) -> bool:
    """Whether the process has the engine's native library (WiredTiger) mapped."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "_wiredtiger" in maps or "/secantus" in maps


class DevServer:
    """`meshgate serve --dev --listen 127.0.0.1:0` in `workdir`, its log in a file."""

    def __init__(self, workdir: Path, pki: Pki, name: str) -> None:
        self.log_path = workdir / f"{name}.log"
        self.workdir = workdir
        self.pki = pki
        env = clean_env(
            MESHGATE_DATA_DIR=str(workdir / "var"),
            MESHGATE_METRICS_LISTEN="127.0.0.1:0",
            MESHGATE_TLS_CERT=str(pki.path("server.pem")),
            MESHGATE_TLS_KEY=str(pki.path("server-key.pem")),
            MESHGATE_TLS_CLIENT_CA=str(pki.path("ca.pem")),
        )
        self.process = start_cli(
            *("serve", "--dev", "--listen", "127.0.0.1:0"),
            env=env,
            log_path=self.log_path,
            cwd=workdir,
            installed=True,
        )
        PROCESS_LOGS.append(self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> re.Match[str]:
        """The start-up line, once written; the server then answers health on its port."""
        pattern = re.compile(
            r"meshgate (\S+) \(revision (\S+)\) serving on 127\.0\.0\.1:(\d+) .*"
            r"metrics and probes on http://127\.0\.0\.1:(\d+)"
        )

        found: list[re.Match[str]] = []

        def written() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"meshgate exited:\n{self.log()}")
            found.extend(filter(None, [pattern.search(self.log())]))
            return bool(found)

        wait_until(written, timeout_s=120, interval_s=0.1, failure=self.log)
        match = found[0]
        port = int(match.group(3))
        assert port != 0
        wait_until_healthy(f"localhost:{port}", self.pki, self.process, self.log_path)
        NEVER_LOGGED.add((self.workdir / "var" / "dev-admin-key").read_text().strip())
        return match

    def engine_pid(self) -> int:
        found = re.search(r"embedded SecantusDB engine \(--dev\), process (\d+)", self.log())
        assert found, self.log()
        return int(found.group(1))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def dev_servers(tmp_path: Path, pki: Pki) -> Iterator[list[DevServer]]:
    started: list[DevServer] = []
    yield started
    for server in started:
        server.kill()


def test_serve_dev_runs_the_mongodb_engine_in_a_child_that_ends_with_it(
    tmp_path: Path, pki: Pki, dev_servers: list[DevServer]
) -> None:
    """The server's process never maps the engine's native library (its child does); the
    child stops when the server stops (SIGTERM) and when it is killed (SIGKILL: the
    engine's lifeline pipe closes). On the way: the start-up line names the port bound for
    `--listen 127.0.0.1:0`, and the version `meshgate --version` prints is the one
    `meshgate_build_info` exports."""
    first = DevServer(tmp_path, pki, "first")
    dev_servers.append(first)
    started = first.started()
    server_pid, engine_pid = first.process.pid, first.engine_pid()
    assert parent_of(engine_pid) == server_pid
    assert loads_engine(engine_pid) and not loads_engine(server_pid)
    for engine_line in ("store: Redis: in-process fakeredis", "store: Qdrant: qdrant-client"):
        assert engine_line in first.log()

    printed = run_meshgate("--version", env=clean_env(), cwd=tmp_path)
    assert printed.returncode == 0
    version, revision = started.group(1), started.group(2)
    assert printed.stdout.strip() == f"meshgate {version} (revision {revision})"
    with urllib.request.urlopen(f"http://127.0.0.1:{started.group(4)}/metrics", timeout=10) as r:
        exposition = r.read().decode()
    assert f'meshgate_build_info{{revision="{revision}",version="{version}"}} 1.0' in exposition

    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=60) == 0
    wait_until(lambda: ended(engine_pid), timeout_s=30, failure=lambda: "the engine runs on")

    second = DevServer(tmp_path, pki, "second")  # the same data: the engine's lock was freed
    dev_servers.append(second)
    second.started()
    engine_pid = second.engine_pid()
    assert parent_of(engine_pid) == second.process.pid
    second.kill()  # SIGKILL: no handler runs; the engine sees its lifeline close
    wait_until(lambda: ended(engine_pid), timeout_s=30, failure=lambda: "the engine runs on")
    assert "bootstrapped organization" not in second.log()  # the first run's data was kept


def test_a_bug_is_logged_with_its_traceback_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Configuration and environment errors are one line; anything else is a bug, and the
    operator gets its traceback (through the guarded JSON log, so redacted)."""

    def broken(settings: Settings, args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_run", broken)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)  # keep the test's log
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda c: Settings()))
    assert cli.main(["serve"]) == 1
    (record,) = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert record.exc_info is not None and str(record.exc_info[1]) == "a bug"


def test_the_help_names_the_settings_page_and_explains_every_option() -> None:
    parser = cli.build_parser()
    assert "docs/operations.md" in parser.format_help()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"serve", "bootstrap", "backup", "restore", "audit"}
    for name, command in commands.choices.items():
        text = command.format_help()
        assert "docs/operations.md" in text, name
        assert name not in ("backup", "restore") or "docs/backup.md" in text
        unexplained = [a.dest for a in command._actions if not a.help]
        assert unexplained == [], f"{name}: {unexplained}"
