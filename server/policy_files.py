"""The policy files reloaded without a restart: the route policy file, the sidecar bindings
and the method policy file (MESHGATE_ROUTE_POLICY_FILE, MESHGATE_EXT_AUTHZ_BINDINGS_FILE,
MESHGATE_METHOD_POLICY_FILE).

Each replica watches its own mounted copy, as it watches the store credentials
(server/credentials.py). Kubernetes updates a mounted ConfigMap by swapping a symlink
(`..data`) to a new directory: the path stays and what it resolves to changes. So every
`check_interval_s` (1 s) the path is stat()ed through its links; when the file it
resolves to, its size or its modification time changed, it is read (at most 1 MiB) and
its SHA-256 compared with the content in force. A new content is parsed and validated
whole, off the event loop, by the code that validated it at start-up
(server/sidecar_files.py); then:

- valid: it applies to the calls that start from then on (the calls in flight finish
  under the policy they started with); logged at INFO with its digest (`sha256:` and 12
  hex digits) and its number of entries;
- invalid: refused, and the policy in force stays; logged at ERROR once per distinct
  content, with the message that would have stopped the server at start-up (the setting,
  the entry, the field). `meshgate_policy_reload_failures_total{file}` counts it and
  `meshgate_policy_file_refused{file}` is 1 until the file holds a valid content again.

`meshgate_policy_file_loaded_timestamp_seconds{file}` is when the policy in force was
loaded: a replica behind its peers did not take a change. What a reload keeps is bounded
by the file's own caps (1 MiB; 1,000 routes, 10,000 sidecars, 1,000 method entries): the
previous policy is dropped once the calls in flight are done with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interceptors.chain import SecurityChain
from interceptors.metrics import Metrics
from interceptors.sidecar.bindings import SidecarBindings
from server.env_values import SettingsError
from server.method_policies import method_policies_applied
from server.policies import build_policy_table
from server.registry import descriptors
from server.settings import Settings
from server.sidecar_files import (
    BINDINGS_FILE,
    MAX_FILE_BYTES,
    METHOD_POLICY_FILE,
    ROUTE_POLICY_FILE,
    check_bindings,
)
from server.sidecars import SidecarAnswers

__all__ = ["PolicyFiles", "WatchedFile", "digest_of", "watched_policy_files"]

_LOG = logging.getLogger("meshgate.policy")


def digest_of(content: bytes) -> str:
    """How the logs name a content: `sha256:` and the first 12 hex digits."""
    return "sha256:" + hashlib.sha256(content).hexdigest()[:12]


def _signature(path: Path) -> tuple[int, ...]:
    """What changes when the file the path resolves to changes (a swapped symlink too)."""
    stat = os.stat(path)  # follows the links
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _read(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(MAX_FILE_BYTES + 1)


@dataclass
class WatchedFile:
    """One policy file: `load` validates a content (SettingsError naming what is wrong),
    `apply` puts the result in force, `entries` counts it for the log."""

    setting: str
    label: str  # the `file` label of the metrics: a fixed name per kind of file
    path: Path
    load: Callable[[Path, bytes], Any]
    apply: Callable[[Any], None]
    entries: Callable[[Any], str]
    signature: tuple[int, ...] | None = None
    digest: str = ""
    refused_digest: str = ""
    loaded_at: float = 0.0
    reloads: int = 0
    failures: int = 0
    unreadable: bool = False

    @property
    def refused(self) -> bool:
        return bool(self.refused_digest)


@dataclass
class PolicyFiles:
    files: list[WatchedFile]
    check_interval_s: float = 1.0
    _by_label: dict[str, WatchedFile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_label = {f.label: f for f in self.files}

    def __getitem__(self, label: str) -> WatchedFile:
        return self._by_label[label]

    @property
    def watching(self) -> bool:
        return bool(self.files)

    def export(self, metrics: Metrics) -> None:
        """The gauges and counters of docs/operations.md, read when scraped."""

        def each(read: Callable[[WatchedFile], float]) -> Mapping[tuple[str, ...], float]:
            return {(f.label,): read(f) for f in self.files}

        metrics.gauge_from(
            "meshgate_policy_file_loaded_timestamp_seconds",
            "when the policy in force was loaded from its file (Unix time)",
            lambda: each(lambda f: f.loaded_at),
            ("file",),
        )
        metrics.gauge_from(
            "meshgate_policy_file_refused",
            "1 while the file holds a content that was refused (the previous policy serves)",
            lambda: each(lambda f: float(f.refused)),
            ("file",),
        )
        metrics.labeled_counter_from(
            "meshgate_policy_reloads_total",
            "new contents of the file put in force without a restart",
            lambda: each(lambda f: float(f.reloads)),
            ("file",),
        )
        metrics.labeled_counter_from(
            "meshgate_policy_reload_failures_total",
            "new contents of the file refused as invalid (each distinct content once)",
            lambda: each(lambda f: float(f.failures)),
            ("file",),
        )

    async def run(self) -> None:
        """Check every `check_interval_s`, forever; cancel to stop."""
        while True:
            await asyncio.sleep(self.check_interval_s)
            await self.check()

    async def check(self) -> None:
        for watched in self.files:
            await self._check(watched)

    async def _check(self, watched: WatchedFile) -> None:
        try:
            signature = _signature(watched.path)
            if signature == watched.signature:
                return
            content = await asyncio.to_thread(_read, watched.path)
        except OSError as exc:  # mid-swap, or removed: the policy in force stays
            if not watched.unreadable:
                _LOG.warning(
                    "%s: cannot read %s (%s); the policy in force stays",
                    watched.setting,
                    watched.path,
                    exc.strerror,
                )
            watched.unreadable = True
            return
        watched.unreadable, watched.signature = False, signature
        digest = digest_of(content)
        if digest == watched.digest:
            if watched.refused:  # back to the content in force
                watched.refused_digest = ""
                _LOG.info("%s: back to the policy in force (%s)", watched.setting, digest)
            return
        if digest == watched.refused_digest:
            return
        try:
            if len(content) > MAX_FILE_BYTES:
                raise SettingsError(
                    f"{watched.setting}: {watched.path} is larger than {MAX_FILE_BYTES} bytes"
                )
            loaded = await asyncio.to_thread(watched.load, watched.path, content)
        except SettingsError as exc:
            watched.refused_digest = digest
            watched.failures += 1
            _LOG.error(
                "%s; refused (%s): the policy in force (%s) stays",
                exc,
                digest,
                watched.digest or "as loaded at start-up",
            )
            return
        first = not watched.digest and not watched.reloads and not watched.failures
        watched.apply(loaded)
        watched.digest, watched.refused_digest = digest, ""
        watched.loaded_at = time.time()
        if not first:
            watched.reloads += 1
        _LOG.info(
            "%s %s: %s (%s), %s",
            watched.setting,
            "in force" if first else "reloaded",
            watched.path,
            digest,
            watched.entries(loaded),
        )


def watched_policy_files(
    settings: Settings, *, chain: SecurityChain, answers: SidecarAnswers
) -> PolicyFiles:
    """The policy files of `settings` that came from a file, each applied where it acts:
    the routes to the ext_authz decider, the bindings to both sidecar services (checked
    against MESHGATE_EXT_AUTHZ_PEERS, which is not reloaded), the method policies to the
    chain (checked against the protos' policies)."""
    files: list[WatchedFile] = []
    if settings.route_policy_file is not None:
        files.append(
            WatchedFile(
                setting=ROUTE_POLICY_FILE.setting,
                label="route_policy",
                path=settings.route_policy_file,
                load=ROUTE_POLICY_FILE.parse,
                apply=answers.check.use_routes,
                entries=lambda routes: f"{len(routes)} routes",
            )
        )
    if settings.ext_authz_bindings_file is not None:
        peers = settings.ext_authz_peers

        def bindings_of(path: Path, content: bytes) -> SidecarBindings:
            return check_bindings(BINDINGS_FILE.parse(path, content), peers)

        files.append(
            WatchedFile(
                setting=BINDINGS_FILE.setting,
                label="ext_authz_bindings",
                path=settings.ext_authz_bindings_file,
                load=lambda path, content: check_bindings(
                    BINDINGS_FILE.parse(path, content), peers
                ),
                apply=answers.use_bindings,
                entries=lambda bindings: f"{len(bindings)} sidecars",
            )
        )
    if settings.method_policy_file is not None:
        declared = build_policy_table(descriptors())
        files.append(
            WatchedFile(
                setting=METHOD_POLICY_FILE.setting,
                label="method_policy",
                path=settings.method_policy_file,
                load=lambda path, content: method_policies_applied(
                    METHOD_POLICY_FILE.parse(path, content), declared
                ),
                apply=lambda tables: chain.use_policies(*tables),
                entries=lambda tables: (
                    f"{len(tables[1])} methods in dry run,"
                    f" {sum(tables[0][m] != declared[m] for m in declared)} narrowed"
                ),
            )
        )
    return PolicyFiles(files)
