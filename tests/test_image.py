"""The container image, as far as this machine can check it without a container runtime.

The Dockerfile passes hadolint; its build context (.dockerignore) lets in what
it copies and nothing else; and the install its build stage makes, from those
files alone, carries the data meshgate reads at run time and pulls neither
embedded engine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.processes import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _context_sources() -> list[str]:
    """What the build stage copies from the build context (COPY without --from)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    allowed = [
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines  # everything else stays out: .venv, var/, certificates, .git
    copied = [source.rstrip("/") for source in _context_sources()]
    assert sorted(copied) == sorted(allowed)
    user = re.findall(r"^USER (\S+)", DOCKERFILE.read_text(), re.M)
    assert user and not user[-1].startswith(("0", "root"))


def test_the_image_install_has_its_data_and_no_embedded_engine(tmp_path: Path) -> None:
    """The build stage's `pip install .` from the build context (plus the generated stubs):
    the wheel must carry plans.json, depend on neither embedded engine, and start."""
    context = tmp_path / "context"
    for source in _context_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            context.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, context / source)
    shutil.copytree(ROOT / "gen", context / "gen", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", "dist", "."],
        cwd=context,
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next((context / "dist").glob("meshgate-*.whl"))
    archive = zipfile.ZipFile(wheel)
    assert "server/plans.json" in archive.namelist()
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA")))
    requires = [
        line for line in metadata.decode().splitlines() if line.startswith("Requires-Dist:")
    ]
    for engine in ("secantusdb", "fakeredis"):
        needs = [line for line in requires if engine in line]
        assert needs and all('extra == "embedded"' in line for line in needs), needs
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        timeout=120,
    )
    probe = (
        "import sys; sys.path = [p for p in sys.path if p not in ('', '.')];"
        f" sys.path.insert(0, {str(target)!r});"
        " import server.settings as s; assert s.__file__.startswith(sys.path[0]), s.__file__;"
        " print(sorted(s.Settings.from_env({}).plans))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['enterprise', 'free', 'pro']"
