"""The README and docs/ against the repository: links, make targets, the method table, settings.

Prose cannot be tested, but these parts of it can drift silently: a renamed
file or heading, a make target that went away, a method whose policy changed
in the protos, a setting added without a line in the configuration table.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from meshgate.v1 import options_pb2

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCE_DIRS = ("server", "services", "interceptors", "calls", "storage")

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_PATH = re.compile(r"`((?:interceptors|services|storage|server|protos|tests|certs|docs)/[^`\s]*)`")
_CHECKED_SUFFIXES = (".py", ".proto", ".json", ".yml", ".yaml", ".md", ".toml")


def prose(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in page.read_text().splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def table_rows(page: Path, section: str) -> list[list[str]]:
    """The cells of every table row under the `## section` heading (header rows excluded)."""
    rows: list[list[str]] = []
    inside = False
    for line in prose(page):
        if line.startswith("## "):
            inside = line[3:].strip() == section
            continue
        if inside and line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert rows, f"{page.name} has no table under '## {section}'"
    return rows[1:]  # the first row is the header


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for line in prose(page):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{target}: no such heading")
            elif path_part and ROOT not in linked.parents and linked != ROOT:
                broken.append(f"{target}: outside the repository")
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_paths_exist(page: Path) -> None:
    missing = []
    for token in _PATH.findall(page.read_text()):
        if any(c in token for c in "*…<>"):
            continue
        checked = token.endswith("/") or token.endswith(_CHECKED_SUFFIXES)
        if checked and not (ROOT / token).exists():
            missing.append(token)
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_make_targets_named_in_the_docs_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    listed = set(re.findall(r"^([a-z][a-z-]*):.*## ", makefile, re.M))  # what `make help` shows
    named: set[str] = set()
    for page in PAGES:
        text = page.read_text()
        named |= set(re.findall(r"`make ([a-z][a-z-]*)", text))
        named |= set(re.findall(r"^make ([a-z][a-z-]*)", text, re.M))
    assert named, "the docs name no make target"
    assert named <= listed, f"named in the docs but not in `make help`: {sorted(named - listed)}"


def _declared_policies() -> dict[str, tuple[str, str, str, str]]:
    """`Service/Method` -> (permission, namespaced, cost, rate class) as the protos declare."""
    access = {options_pb2.ACCESS_INTERNAL_PEER: "internal peer"}
    out = {}
    for proto in sorted((ROOT / "protos/meshgate/v1").glob("*_service.proto")):
        module = importlib.import_module(f"meshgate.v1.{proto.stem}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                policy = method.GetOptions().Extensions[options_pb2.policy]
                permission = access.get(
                    policy.access,
                    options_pb2.Permission.Name(policy.permission).removeprefix("PERMISSION_"),
                )
                rate_class = options_pb2.RateClass.Name(policy.rate_class)
                out[f"{service.name}/{method.name}"] = (
                    permission,
                    "yes" if policy.namespaced else "no",
                    str(policy.cost),
                    rate_class.removeprefix("RATE_CLASS_").lower(),
                )
    return out


def test_method_table_matches_the_protos() -> None:
    documented = {
        row[0]: tuple(row[1:5]) for row in table_rows(ROOT / "docs/api.md", "Services and methods")
    }
    declared = _declared_policies()
    assert sorted(documented) == sorted(declared)
    wrong = {m: (documented[m], declared[m]) for m in declared if documented[m] != declared[m]}
    assert not wrong, f"documented vs declared: {wrong}"


def _source_settings() -> set[str]:
    names: set[str] = set()
    for directory in SOURCE_DIRS:
        for path in (ROOT / directory).rglob("*.py"):
            names |= set(re.findall(r"\b(MESHGATE_[A-Z0-9_]*[A-Z0-9])\b", path.read_text()))
    return names


def test_configuration_table_lists_every_setting() -> None:
    documented: set[str] = set()
    for row in table_rows(ROOT / "docs/operations.md", "Configuration"):
        documented |= set(re.findall(r"`((?:MESHGATE|OTEL)_[A-Z0-9_]+)`", row[0]))
    missing = _source_settings() - documented
    assert not missing, f"read by the code but not in docs/operations.md: {sorted(missing)}"


def test_documented_variables_exist() -> None:
    known = _source_settings()
    for path in (ROOT / "tests").rglob("*.py"):
        known |= set(re.findall(r"\b(MESHGATE_[A-Z0-9_]*[A-Z0-9])\b", path.read_text()))
    named: set[str] = set()
    for page in PAGES:
        named |= set(re.findall(r"\b(MESHGATE_[A-Z0-9_]*[A-Z0-9])\b", page.read_text()))
    assert not named - known, f"documented but read nowhere: {sorted(named - known)}"


_TEST_REFERENCE = re.compile(r"(tests/[\w/.-]+?\.py)::(\w+)(?:\[[^\]`]*\])?")
_TEST_NAMES_CACHE: dict[Path, set[str]] = {}


def _functions_defined(path: Path) -> set[str]:
    """The names of every function (`def` or `async def`, at any depth) a test module defines."""
    if path not in _TEST_NAMES_CACHE:
        tree = ast.parse(path.read_text())
        _TEST_NAMES_CACHE[path] = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
    return _TEST_NAMES_CACHE[path]


def _unknown_tests(text: str) -> list[str]:
    """The `tests/<path>.py::<name>` references in `text` whose file or function does not exist."""
    unknown = []
    for match in _TEST_REFERENCE.finditer(text):
        path, name = ROOT / match.group(1), match.group(2)
        if not path.is_file() or name not in _functions_defined(path):
            unknown.append(match.group(0))
    return unknown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_tests_exist(page: Path) -> None:
    """A page that names a test as proof names one that exists: a moved or renamed test shows."""
    unknown = _unknown_tests(page.read_text())
    assert not unknown, f"{page.name} names tests that do not exist: {unknown}"


def _limits_rows() -> list[list[str]]:
    """The rows of every table under security.md's `## Limits`, its `###` subsections included."""
    rows = [row for row in table_rows(ROOT / "docs/security.md", "Limits") if row[0] != "surface"]
    assert len(rows) > 20, "the Limits tables are missing"
    return rows


def test_every_limit_names_a_test_that_exists() -> None:
    """Each row of the Limits tables names the test that proves it, as `tests/<path>.py::<name>`."""
    without_test, wrong_width = [], []
    for row in _limits_rows():
        if len(row) != 4:
            wrong_width.append(row[0])
        elif not _TEST_REFERENCE.search(row[3]):
            without_test.append(row[0])
    assert not wrong_width, f"rows without four cells: {wrong_width}"
    assert not without_test, f"limits that name no test: {without_test}"
    unknown = _unknown_tests("\n".join("|".join(row) for row in _limits_rows()))
    assert not unknown, f"limits that name a test that does not exist: {unknown}"
