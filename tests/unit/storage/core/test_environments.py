"""One environment list: settings, the proto enum and key secrets all follow it."""

from __future__ import annotations

import pytest
from meshgate.v1 import common_pb2

from server.settings import Settings
from services.convert import environment_from_proto, environment_to_proto
from storage.core.environments import ENVIRONMENTS, SECRET_TOKENS
from storage.core.errors import InvalidArgumentError
from storage.core.key_secrets import mint_secret, parse_secret


def test_every_environment_has_a_proto_value_and_a_secret_token() -> None:
    assert ENVIRONMENTS == ("development", "staging", "production")
    proto_names = {
        name
        for name in common_pb2.Environment.DESCRIPTOR.values_by_name
        if name != "ENVIRONMENT_UNSPECIFIED"
    }
    assert proto_names == {f"ENVIRONMENT_{name.upper()}" for name in ENVIRONMENTS}
    for name in ENVIRONMENTS:
        assert environment_from_proto(environment_to_proto(name)) == name
        secret = mint_secret(name).secret
        assert secret.startswith(f"mg_{SECRET_TOKENS[name]}_")
        parsed = parse_secret(secret)
        assert parsed is not None and parsed.environment == name


def test_settings_accept_every_environment_by_default() -> None:
    assert Settings.from_env({}).environments == frozenset(ENVIRONMENTS)


def test_unspecified_environment_is_refused_with_the_enum_names() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        environment_from_proto(common_pb2.ENVIRONMENT_UNSPECIFIED)
    assert info.value.message == (
        "environment must be ENVIRONMENT_DEVELOPMENT, ENVIRONMENT_STAGING or ENVIRONMENT_PRODUCTION"
    )
