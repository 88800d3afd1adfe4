"""Server TLS with required client certificates, re-read when the files change.

Uses grpc's dynamic server credentials: before each new handshake grpc asks
for a fresh configuration; we stat the files at most once a second and hand
over a new configuration only when one of them changed (and loads cleanly),
so certificate rotation needs no restart. The files are checked before they are
used, at start-up (a missing or unreadable file, a file that is not what its
setting says, a key that does not match the certificate: one line naming the
setting and the file, exit code 2) and at each rotation (a bad new set is
logged and the current one kept). `bind` opens the server's port with them
(or without TLS, for local debugging only), and the sidecar port
(MESHGATE_SIDECAR_LISTEN) with the same credentials when one is set.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from server.env_values import SettingsError
from server.failures import ListenError
from server.settings import Settings

__all__ = ["ReloadingServerCredentials", "bind", "read_tls_files"]

_LOG = logging.getLogger("meshgate.tls")


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _certificates(setting: str, path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SettingsError(f"{setting}: {path} holds no PEM certificate") from None


def read_tls_files(*, cert: Path, key: Path, client_ca: Path) -> tuple[bytes, bytes, bytes]:
    """The three files' bytes once each is what its setting says: a certificate (chain),
    its unencrypted private key, the client CA; SettingsError naming the setting otherwise
    (grpc would only fail at the first handshake, with no word of which file)."""
    cert_pem = _read("MESHGATE_TLS_CERT", cert)
    key_pem = _read("MESHGATE_TLS_KEY", key)
    ca_pem = _read("MESHGATE_TLS_CLIENT_CA", client_ca)
    leaf = _certificates("MESHGATE_TLS_CERT", cert, cert_pem)[0]
    _certificates("MESHGATE_TLS_CLIENT_CA", client_ca, ca_pem)
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # encrypted: grpc cannot use it
        raise SettingsError(
            f"MESHGATE_TLS_KEY: {key} is encrypted; meshgate needs the key without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SettingsError(f"MESHGATE_TLS_KEY: {key} holds no PEM private key") from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise SettingsError(
            f"MESHGATE_TLS_KEY: {key} is not the key of the certificate in {cert}"
            " (MESHGATE_TLS_CERT)"
        )
    return cert_pem, key_pem, ca_pem


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
        cert_path, key_path, ca_path = self._files
        cert, key, ca = read_tls_files(cert=cert_path, key=key_path, client_ca=ca_path)
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
            except SettingsError as exc:  # a bad new set: keep serving the old one
                _LOG.warning("new certificate files refused, keeping the current ones: %s", exc)
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
    else:
        tls = ReloadingServerCredentials(
            cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca
        )
    port = _add_port(server, where, tls, setting="MESHGATE_LISTEN (or --listen)")
    if settings.sidecar_listen is not None:
        # the same server on a second port: sidecars reach it where the mesh does not intercept
        _add_port(server, settings.sidecar_listen, tls, setting="MESHGATE_SIDECAR_LISTEN")
    return port, tls


def _add_port(
    server: grpc.aio.Server, where: str, tls: ReloadingServerCredentials | None, *, setting: str
) -> int:
    """The port bound at `where`; ListenError naming the setting when it cannot be bound
    (grpc says only that it failed)."""
    try:
        port = (
            server.add_insecure_port(where)
            if tls is None
            else server.add_secure_port(where, tls.credentials())
        )
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(
            f"{setting}: cannot listen on {where}: the port is taken, or the host is not an"
            " address of this machine"
        )
    return port
