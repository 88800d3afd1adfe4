"""Server TLS with required client certificates, re-read when the files change.

Uses grpc's dynamic server credentials: before each new handshake grpc asks
for a fresh configuration; we stat the files at most once a second and hand
over a new configuration only when one of them changed (and loads cleanly),
so certificate rotation needs no restart. `bind` opens the server's port with
them (or without TLS, for local debugging only), and the sidecar port
(MESHGATE_SIDECAR_LISTEN) with the same credentials when one is set.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc

from server.settings import Settings

__all__ = ["ReloadingServerCredentials", "bind"]

_LOG = logging.getLogger("meshgate.tls")


class ReloadingServerCredentials:
    def __init__(self, *, cert: Path, key: Path, client_ca: Path, check_interval_s: float = 1.0):
        self._files = (cert, key, client_ca)
        self._interval = check_interval_s
        self._lock = threading.Lock()
        self._last_check = 0.0
        self._stamp = self._stat()
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int], ...]:
        return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in self._files)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = (p.read_bytes() for p in self._files)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_check < self._interval:
                return None
            self._last_check = now
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                config = self._load()
            except OSError as exc:  # half-written rotation: keep serving the old files
                _LOG.warning("certificate files unreadable, keeping the current ones: %s", exc)
                return None
            self._stamp = stamp
            self.reloads += 1
            _LOG.info("certificate files changed; new handshakes use the new certificates")
            return config

    def credentials(self) -> grpc.ServerCredentials:
        # grpc-stubs type the fetcher as never returning None; grpc documents None as "unchanged"
        return grpc.dynamic_ssl_server_credentials(
            self._load(),
            self._fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )


def bind(
    server: grpc.aio.Server, settings: Settings, address: str | None
) -> tuple[int, ReloadingServerCredentials | None]:
    """Listen on `address` (else the settings'); returns the port and the credentials."""
    where = address or settings.listen
    tls: ReloadingServerCredentials | None = None
    if settings.insecure:
        _LOG.warning("serving WITHOUT TLS (--insecure): for local debugging only")
        port = server.add_insecure_port(where)
    else:
        tls = ReloadingServerCredentials(
            cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca
        )
        port = server.add_secure_port(where, tls.credentials())
    if port == 0:
        raise OSError(f"could not bind {where}")
    if settings.sidecar_listen is not None:
        # the same server on a second port: sidecars reach it where the mesh does not intercept
        extra = (
            server.add_insecure_port(settings.sidecar_listen)
            if tls is None
            else server.add_secure_port(settings.sidecar_listen, tls.credentials())
        )
        if extra == 0:
            raise OSError(f"could not bind {settings.sidecar_listen}")
    return port, tls
