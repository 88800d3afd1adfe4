"""`make stubs` builds a wheel other services can install and import."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.processes import ROOT


def test_stubs_wheel_installs_and_imports(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "stubs"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    wheels = sorted((ROOT / "dist").glob("meshgate_stubs-*.whl"))
    assert wheels, "make stubs built no wheel"
    names = set(zipfile.ZipFile(wheels[-1]).namelist())
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
