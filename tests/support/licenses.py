"""The licenses of meshgate's dependencies, read from the installed distributions' metadata,
against the allow-list kept in the repository (licenses.toml).

Dependencies are grouped as they are installed: `runtime` is what `pip install
meshgate` pulls in (the container image's), `embedded` what the `embedded` extra
adds, `dev` what the `dev` extra adds; each group has its own list of allowed
licenses. A distribution's license is its SPDX `License-Expression`, else its
`License` field when that is a known name, else its license classifiers, else
the allow-list's override for it (checked by hand); anything else is unknown,
and unknown is not allowed. `python -m tests.support.licenses` prints the table.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "ALLOW_LIST",
    "GROUPS",
    "AllowList",
    "Dependency",
    "dependencies",
    "disallowed",
    "license_of",
    "read_allow_list",
    "table",
]

ALLOW_LIST = Path(__file__).resolve().parents[2] / "licenses.toml"
GROUPS = ("runtime", "embedded", "dev")

# the free-text `License` fields and license classifiers seen in the wild, as SPDX ids
_NAMES = {
    "mit": "MIT",
    "mit license": "MIT",
    "the mit license (mit)": "MIT",
    "apache-2.0": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "bsd 2-clause license": "BSD-2-Clause",
    "3-clause bsd license": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "mpl-2.0": "MPL-2.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "gpl-3.0": "GPL-3.0-only",
    "gnu general public license v3 (gplv3)": "GPL-3.0-only",
    "isc license (iscl)": "ISC",
    "python software foundation license": "PSF-2.0",
}


@dataclass(frozen=True, slots=True)
class Dependency:
    name: str
    version: str
    group: str
    license: str  # an SPDX expression, or "unknown: <what the metadata says>"


def license_of(dist: metadata.Distribution, overrides: Mapping[str, str]) -> str:
    fields = dist.metadata
    expression = (fields.get("License-Expression") or "").strip()
    if expression:
        return expression
    text = (fields.get("License") or "").strip()
    if text.lower() in _NAMES:
        return _NAMES[text.lower()]
    classifiers = [
        c.rsplit("::", 1)[1].strip().lower()
        for c in fields.get_all("Classifier") or []
        if c.startswith("License ::") and c.count("::") >= 2
    ]
    known = sorted({_NAMES[c] for c in classifiers if c in _NAMES})
    if len(known) == 1:
        return known[0]
    name = canonicalize_name(fields["Name"])
    if name in overrides:
        return overrides[name]
    return f"unknown: {text[:40] or ', '.join(classifiers) or 'no license in the metadata'}"


def _requirements(dist: metadata.Distribution, extras: Iterable[str]) -> list[Requirement]:
    """The distribution's requirements that apply with these extras (and none)."""
    wanted = ["", *extras]
    found = []
    for line in dist.requires or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in wanted):
            found.append(requirement)
    return found


def _closure(root: str, extras: Iterable[str]) -> dict[str, metadata.Distribution]:
    """Every installed distribution `root[extras]` depends on, directly or not."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [(root, tuple(extras))]
    while pending:
        name, wanted = pending.pop()
        dist = metadata.distribution(name)
        for requirement in _requirements(dist, wanted):
            key = canonicalize_name(requirement.name)
            if key not in seen:
                seen[key] = metadata.distribution(requirement.name)
            pending.append((requirement.name, tuple(requirement.extras)))
    return seen


@dataclass(frozen=True, slots=True)
class AllowList:
    allowed: Mapping[str, frozenset[str]]  # by group
    overrides: Mapping[str, str]  # by canonical distribution name


def read_allow_list(path: Path = ALLOW_LIST) -> AllowList:
    with path.open("rb") as handle:
        document = tomllib.load(handle)
    return AllowList(
        allowed={group: frozenset(document[group]["allowed"]) for group in GROUPS},
        overrides={canonicalize_name(k): str(v) for k, v in document["overrides"].items()},
    )


def dependencies(allow_list: AllowList) -> list[Dependency]:
    """meshgate's installed dependencies, each in the first group that brings it in."""
    overrides = allow_list.overrides
    runtime = _closure("meshgate", ())
    embedded = {k: d for k, d in _closure("meshgate", ("embedded",)).items() if k not in runtime}
    dev = {k: d for k, d in _closure("meshgate", ("dev",)).items() if k not in runtime | embedded}
    listed = []
    for group, dists in (("runtime", runtime), ("embedded", embedded), ("dev", dev)):
        for key, dist in sorted(dists.items()):
            listed.append(Dependency(key, dist.version, group, license_of(dist, overrides)))
    return listed


def _allowed(expression: str, allowed: frozenset[str]) -> bool:
    """An SPDX expression of ids joined by AND and OR (no parentheses): one side of an OR
    may be chosen; every part of an AND must be allowed."""
    if expression.startswith("unknown") or "(" in expression:
        return False
    return any(
        all(part.strip() in allowed for part in re.split(r"\s+AND\s+", choice))
        for choice in re.split(r"\s+OR\s+", expression)
    )


def disallowed(listed: Iterable[Dependency], allow_list: AllowList) -> list[Dependency]:
    """The dependencies whose license is not on their group's list."""
    return [d for d in listed if not _allowed(d.license, allow_list.allowed[d.group])]


def table(listed: Iterable[Dependency]) -> str:
    return "\n".join(f"{d.group:9} {d.name:36} {d.version:18} {d.license}" for d in listed)


if __name__ == "__main__":
    print(table(dependencies(read_allow_list())))
    sys.exit(0)
