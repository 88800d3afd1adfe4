"""Transport security: client certificates are required, and rotated certificates load live."""

from __future__ import annotations

import asyncio
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from certs.dev_pki import issue_pki
from interceptors.metrics import Metrics
from server.app import RunningServer, create_server
from server.backends import Backends
from server.failures import ListenError
from server.observability import serve_metrics
from server.settings import Settings, SettingsError
from server.tls import ReloadingServerCredentials, bind, read_tls_files
from tests.support.clients import client_credentials, health_check, health_watch
from tests.support.pki import Pki

CHECK = health_pb2.HealthCheckRequest()


async def health_status(port: int, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        response = await health_check(channel)(CHECK, timeout=5)
        return int(response.status)


async def refused(port: int, credentials: grpc.ChannelCredentials) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_status(port, credentials)
    return info.value


async def test_mtls_client_is_served(server: RunningServer, pki: Pki) -> None:
    assert (
        await health_status(server.port, client_credentials(pki))
        == health_pb2.HealthCheckResponse.SERVING
    )


async def test_connection_without_client_certificate_is_refused(
    server: RunningServer, pki: Pki
) -> None:
    error = await refused(
        server.port, grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"))
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_certificate_from_another_ca_is_refused(
    server: RunningServer, pki: Pki
) -> None:
    """Same SPIFFE id as the real client, signed by a CA the server does not trust."""
    error = await refused(server.port, client_credentials(pki, "foreign"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_is_refused(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"localhost:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_check(channel)(CHECK, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificates_reload_without_restart(
    settings: Settings, backends: Backends, tmp_path: Path
) -> None:
    old, new, live = tmp_path / "old", tmp_path / "new", tmp_path / "live"
    issue_pki(old, ca_name="CA one")
    issue_pki(new, ca_name="CA two")
    shutil.copytree(old, live)
    running = await create_server(
        replace(
            settings,
            tls_cert=live / "server.pem",
            tls_key=live / "server-key.pem",
            tls_client_ca=live / "ca.pem",
        ),
        backends,
    )
    try:
        old_client, new_client = client_credentials(Pki(old)), client_credentials(Pki(new))
        assert (
            await health_status(running.port, old_client) == health_pb2.HealthCheckResponse.SERVING
        )
        await refused(running.port, new_client)
        for name in ("server-key.pem", "server.pem", "ca.pem"):
            shutil.copy(new / name, live / name)
        await asyncio.sleep(1.1)  # the files are checked at most once a second
        await refused(running.port, old_client)  # a handshake triggers the reload
        assert (
            await health_status(running.port, new_client) == health_pb2.HealthCheckResponse.SERVING
        )
        await refused(running.port, old_client)
        assert running.tls is not None and running.tls.reloads == 1
    finally:
        await running.stop(0)


async def _next_status(
    watch: grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
) -> int:
    response = await watch.read()
    assert isinstance(response, health_pb2.HealthCheckResponse)
    return int(response.status)


async def test_draining_server_reports_not_serving(
    settings: Settings, backends: Backends, pki: Pki
) -> None:
    running = await create_server(settings, backends)
    seen: list[int] = []
    async with grpc.aio.secure_channel(
        f"localhost:{running.port}", client_credentials(pki)
    ) as channel:
        watch = health_watch(channel)(CHECK)
        seen.append(await _next_status(watch))
        stopping = asyncio.create_task(running.stop(2.0))
        seen.append(await _next_status(watch))
        await stopping
    assert seen == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]


@pytest.mark.parametrize(
    ("setting", "content", "says"),
    [
        ("MESHGATE_TLS_CERT", None, "cannot read {path}: No such file or directory"),
        ("MESHGATE_TLS_CERT", b"not a certificate\n", "{path} holds no PEM certificate"),
        ("MESHGATE_TLS_KEY", b"not a key\n", "{path} holds no PEM private key"),
        ("MESHGATE_TLS_KEY", "client-key.pem", "{path} is not the key of the certificate in"),
        ("MESHGATE_TLS_CLIENT_CA", b"", "{path} holds no PEM certificate"),
    ],
    ids=["missing", "not PEM", "not a key", "another certificate's key", "empty CA"],
)
def test_a_bad_tls_file_is_named_with_its_setting(
    pki: Pki, tmp_path: Path, setting: str, content: bytes | str | None, says: str
) -> None:
    """The one line `meshgate serve` prints (exit code 2; tests/server/test_startup.py runs
    the command with a missing certificate)."""
    files = {
        "MESHGATE_TLS_CERT": pki.path("server.pem"),
        "MESHGATE_TLS_KEY": pki.path("server-key.pem"),
        "MESHGATE_TLS_CLIENT_CA": pki.path("ca.pem"),
    }
    path = pki.path(content) if isinstance(content, str) else tmp_path / "file.pem"
    if isinstance(content, bytes):
        path.write_bytes(content)
    files[setting] = path
    with pytest.raises(SettingsError) as raised:
        read_tls_files(
            cert=files["MESHGATE_TLS_CERT"],
            key=files["MESHGATE_TLS_KEY"],
            client_ca=files["MESHGATE_TLS_CLIENT_CA"],
        )
    assert str(raised.value).startswith(f"{setting}: {says.format(path=path)}")


def test_a_rotation_to_bad_files_keeps_the_current_ones(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("server.pem", "server-key.pem", "ca.pem"):
        shutil.copy(pki.path(name), tmp_path / name)
    reloading = ReloadingServerCredentials(
        cert=tmp_path / "server.pem",
        key=tmp_path / "server-key.pem",
        client_ca=tmp_path / "ca.pem",
        check_interval_s=0,
    )
    (tmp_path / "server-key.pem").write_bytes(pki.read("client-key.pem"))  # not its key
    assert reloading._fetch() is None  # grpc keeps the configuration it has
    assert reloading.reloads == 0
    assert "new certificate files refused, keeping the current ones" in caplog.text
    (tmp_path / "server-key.pem").write_bytes(pki.read("server-key.pem"))
    assert reloading._fetch() is not None and reloading.reloads == 1


async def test_an_address_that_cannot_be_bound_names_its_setting(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        server = grpc.aio.server()
        with pytest.raises(ListenError, match=r"^MESHGATE_LISTEN \(or --listen\): cannot listen"):
            bind(server, replace(settings, insecure=True), address)
        with pytest.raises(ListenError, match=r"^MESHGATE_METRICS_LISTEN: cannot listen on"):
            serve_metrics(Metrics(), address, ready=lambda: True, loop=asyncio.get_running_loop())
