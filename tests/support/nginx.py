"""nginx from Debian's packages in front of a test server, configured by deploy/nginx/.

`make test` installs nginx as root when it is missing (the Makefile's `need`);
elsewhere the tests fail with the command to run. nginx runs in the
foreground on a loopback port with everything it writes under a temporary
prefix, so a system nginx (if any) is neither used nor touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import free_port
from tests.support.waiting import wait_until

__all__ = ["NGINX_CONF", "Nginx", "nginx_binary", "render_nginx_conf"]

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "meshgate.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.fail(
            "nginx not found: `make test` installs Debian's nginx when run as root;"
            " otherwise `sudo apt-get install nginx`"
        )
    return found


def render_nginx_conf(*, prefix: Path, listen: str, upstream: str, certs: Path) -> str:
    """deploy/nginx/meshgate.conf with its {{placeholders}} filled in."""
    text = NGINX_CONF.read_text()
    for name, value in {
        "prefix": str(prefix),
        "listen": listen,
        "upstream": upstream,
        "upstream_name": "localhost",
        "certs": str(certs),
    }.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, "deploy/nginx/meshgate.conf has a placeholder the tests do not fill"
    return text


@dataclass
class Nginx:
    """nginx on 127.0.0.1:`port` proxying to meshgate on `upstream_port`."""

    prefix: Path
    certs: Path
    upstream_port: int
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def error_log(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text() if log.exists() else ""

    def start(self) -> Nginx:
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            render_nginx_conf(
                prefix=self.prefix,
                listen=f"127.0.0.1:{self.port}",
                upstream=f"127.0.0.1:{self.upstream_port}",
                certs=self.certs,
            )
        )
        binary = nginx_binary()
        # the configuration must be valid as written, before it is run
        checked = subprocess.run(
            [binary, "-t", "-q", "-p", str(self.prefix), "-e", "stderr", "-c", str(conf)],
            capture_output=True,
            check=False,
        )
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr.decode()}")
        self.process = subprocess.Popen(
            [
                binary,
                "-p",
                str(self.prefix),
                "-e",
                str(self.prefix / "error.log"),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited ({process.returncode}):\n{self.error_log()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, timeout_s=10, failure=lambda: f"nginx silent:\n{self.error_log()}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # fast shutdown of the master and its worker
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
