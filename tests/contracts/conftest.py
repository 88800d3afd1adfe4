"""The contract tests: each fake of tests/support/fakes and the real store it stands in
for, through the same cases. A case names its tier: the fake's runs in the unit tier
(`make test-unit`), the real store's in the integration tier (with `make test`)."""

from __future__ import annotations

import pytest

__all__ = ["FAKE_AND_REAL"]

FAKE_AND_REAL = [
    pytest.param("fake", marks=pytest.mark.unit),
    pytest.param("real", marks=pytest.mark.integration),
]
