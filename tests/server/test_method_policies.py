"""The method policy file: it may only narrow a method's declared policy (to ADMIN), each
entry enforced or in dry run; anything else is refused, naming the entry and the field."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.app import create_server
from server.backends import Backends
from server.method_policies import (
    MAX_METHOD_ENTRIES,
    MethodPolicyError,
    parse_method_policies,
)
from server.policies import build_policy_table
from server.registry import descriptors
from server.settings import Settings, SettingsError

DELETE = "/meshgate.v1.DocumentService/DeleteDocument"
GET_ORGANIZATION = "/meshgate.v1.OrganizationService/GetOrganization"


def test_a_method_is_narrowed_to_admin_enforced_or_in_dry_run() -> None:
    declared = build_policy_table(descriptors())
    overrides = parse_method_policies(
        {
            "methods": [
                {"method": DELETE, "permission": "admin"},
                {"method": GET_ORGANIZATION, "permission": "admin", "dry_run": True},
            ]
        }
    )
    policies, dry_run = overrides.applied_to(declared)
    assert policies[DELETE].permission == "admin" and declared[DELETE].permission == "delete"
    # nothing else of the policy changes
    assert policies[DELETE].namespaced and policies[DELETE].rate_class == "data"
    assert policies[GET_ORGANIZATION] == declared[GET_ORGANIZATION]
    assert dry_run == {GET_ORGANIZATION: replace(declared[GET_ORGANIZATION], permission="admin")}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"methods": {}}, '"methods" must be a list'),
        (
            {"methods": [{"method": DELETE, "permission": "read"}]},
            "methods[0]: permission must be admin",
        ),
        (
            {"methods": [{"method": DELETE, "permission": "admin", "rate_class": "admin"}]},
            "methods[0]: unknown field 'rate_class'",
        ),
        (
            {"methods": [{"method": "/x.y.Z/A", "permission": "admin"}]},
            "methods[0]: method must be",
        ),
        (
            {"methods": [{"method": DELETE, "permission": "admin"}] * 2},
            f"methods[1]: {DELETE} is overridden twice",
        ),
        (
            {"methods": [{"method": DELETE, "permission": "admin", "dry_run": 1}]},
            "methods[0]: dry_run must be true or false",
        ),
        (
            {"methods": [{"method": DELETE, "permission": "admin"}] * (MAX_METHOD_ENTRIES + 1)},
            f"at most {MAX_METHOD_ENTRIES} entries",
        ),
    ],
)
def test_the_form_of_each_entry_is_checked(document: Any, message: str) -> None:
    with pytest.raises(MethodPolicyError) as refused:
        parse_method_policies(document)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("/meshgate.v1.KeyService/CreateKey", "already needs ADMIN: nothing to narrow"),
        ("/meshgate.v1.IdentityService/ResolveOrganization", "is not a meshgate method called"),
        ("/meshgate.v1.NoService/Nothing", "is not a meshgate method called"),
    ],
)
def test_an_override_that_names_no_api_key_method_or_narrows_nothing_is_refused(
    method: str, message: str
) -> None:
    overrides = parse_method_policies({"methods": [{"method": method, "permission": "admin"}]})
    with pytest.raises(MethodPolicyError, match=message):
        overrides.applied_to(build_policy_table(descriptors()))


async def test_a_bad_method_policy_file_stops_the_server_naming_the_entry(
    settings: Settings, backends: Backends, tmp_path: Path
) -> None:
    bad_form = tmp_path / "methods.yaml"
    bad_form.write_text(yaml.safe_dump({"methods": [{"method": DELETE, "permission": "read"}]}))
    with pytest.raises(SettingsError, match=r"^MESHGATE_METHOD_POLICY_FILE: .*methods\[0\]"):
        Settings.from_env({"MESHGATE_METHOD_POLICY_FILE": str(bad_form)})
    widening = tmp_path / "widening.yaml"
    widening.write_text(
        yaml.safe_dump({"methods": [{"method": "/meshgate.v1.KeyService/ListKeys",
                                     "permission": "admin", "dry_run": True}]})
    )  # fmt: skip
    loaded = Settings.from_env({"MESHGATE_METHOD_POLICY_FILE": str(widening)})
    assert loaded.method_policy_file == widening and len(loaded.method_policies) == 1
    with pytest.raises(SettingsError, match=r"methods\[0\]: .*ListKeys already needs ADMIN"):
        await create_server(replace(settings, method_policies=loaded.method_policies), backends)
