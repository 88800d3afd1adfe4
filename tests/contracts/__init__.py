"""The contract tests: each fake of tests/support/fakes and the real store it stands in
for, through the same cases. A case names its tier (`FAKE_AND_REAL`,
tests/support/unit_tier.py): the fake's runs in the unit tier (`make test-unit`), the
real store's in the integration tier (with `make test`)."""
