"""The house's rules that a reader relies on to find things, checked: a unit test module
is named after the source module it tests (tests/unit/<path>/test_<module>.py for
<path>/<module>.py), and no source module grows past 400 lines."""

from __future__ import annotations

from tests.support.unit_tier import UNIT

ROOT = UNIT.parents[1]
SOURCE = ("server", "services", "interceptors", "calls", "storage")
# tests of the tiers and of the tree itself, named after what they check
ABOUT_THE_HOUSE = {"test_unit_tier.py", "test_layout.py"}


def test_every_unit_test_module_is_named_after_its_source_module() -> None:
    strays = []
    for test in sorted(UNIT.rglob("test_*.py")):
        if test.parent == UNIT and test.name in ABOUT_THE_HOUSE:
            continue
        source = ROOT / test.parent.relative_to(UNIT) / test.name.removeprefix("test_")
        if not source.is_file():
            strays.append(str(test.relative_to(ROOT)))
    assert strays == [], f"unit tests without a source module of their name: {strays}"


def test_no_source_module_is_over_400_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in SOURCE
        for path in (ROOT / package).rglob("*.py")
    }
    assert sizes, "no source found"
    assert {path: n for path, n in sizes.items() if n > 400} == {}
