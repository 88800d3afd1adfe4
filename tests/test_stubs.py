"""`make stubs` builds a wheel other services can install and import, versioned by the API:
protos/VERSION, with an entry in protos/CHANGELOG.md for the protos as they are."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.processes import ROOT

PROTOS = ROOT / "protos"


def protos_digest() -> str:
    """SHA-256 over every .proto's path and content, in path order (protos/CHANGELOG.md)."""
    digest = hashlib.sha256()
    for path in sorted(PROTOS.glob("meshgate/**/*.proto")):
        digest.update(path.relative_to(PROTOS).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def test_the_api_version_has_a_changelog_entry_for_these_protos() -> None:
    version = (PROTOS / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    changelog = (PROTOS / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\S+) \(\d{4}-\d{2}-\d{2}\)\n\nprotos: sha256:(\w+)$", changelog, re.M)
    assert newest, "protos/CHANGELOG.md has no entry"
    assert newest.group(1) == version, "protos/VERSION is not the newest changelog entry"
    assert newest.group(2) == protos_digest(), (
        f"protos/ changed since {version}: set protos/VERSION to the next version (minor for"
        " additions; protos/CHANGELOG.md says which) and add an entry for it to"
        f" protos/CHANGELOG.md with `protos: sha256:{protos_digest()}`"
    )


def test_stubs_wheel_installs_and_imports(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "stubs"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    version = (PROTOS / "VERSION").read_text().strip()
    wheels = sorted((ROOT / "dist").glob(f"meshgate_stubs-{version}-*.whl"))
    assert wheels, f"make stubs built no wheel of version {version}"
    archive = zipfile.ZipFile(wheels[-1])
    names = set(archive.namelist())
    metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    requires = [
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    # the lower bounds are what the generated code checks at import time
    generated = ROOT / "gen" / "meshgate" / "v1"
    grpc_needs = re.search(
        r"^GRPC_GENERATED_VERSION = '(.+)'$",
        (generated / "key_service_pb2_grpc.py").read_text(),
        re.M,
    )
    protobuf_needs = re.search(
        r"^# Protobuf Python Version: (\d+)\.(.+)$",
        (generated / "key_service_pb2.py").read_text(),
        re.M,
    )
    assert grpc_needs and protobuf_needs
    major = int(protobuf_needs.group(1))
    assert sorted(requires) == sorted(
        [
            f"grpcio>={grpc_needs.group(1)}",
            f"protobuf<{major + 1},>={major}.{protobuf_needs.group(2)}",
            "googleapis-common-protos<2,>=1.74",
        ]
    )
    assert "License-Expression: Apache-2.0" in metadata
    for expected in (
        "meshgate/v1/key_service_pb2.py",
        "meshgate/v1/key_service_pb2.pyi",
        "meshgate/v1/key_service_pb2_grpc.py",
        "meshgate/v1/key_service.proto",
        "meshgate/py.typed",
    ):
        assert expected in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheels[-1]),
        ],
        check=True,
        timeout=120,
    )
    probe = (
        "import sys; sys.path = [p for p in sys.path if 'gen' not in p and p not in ('', '.')]; "
        f"sys.path.insert(0, {str(target)!r}); "
        "from meshgate.v1 import key_service_pb2_grpc as g, key_service_pb2 as m; "
        "assert m.__file__.startswith(sys.path[0]); print(g.KeyServiceStub.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "KeyServiceStub"
