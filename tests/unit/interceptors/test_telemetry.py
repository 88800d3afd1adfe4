"""Step 1, telemetry, in-process: the request id (the caller's when it is sane, else a fresh
one), one access line per call with the call's ids and never a secret, and the metrics."""

from __future__ import annotations

import logging

import grpc
import pytest

from calls.policy import Access, Policy
from interceptors.metrics import Metrics
from interceptors.telemetry import Telemetry, peer_attributes
from tests.support.request_path import call_state

READ = Policy(access=Access.API_KEY, permission="read")
METHOD = "/meshgate.v1.OrganizationService/GetOrganization"


@pytest.mark.parametrize("given", ["req-1", "a.b:c_d-E", "x" * 128])
def test_a_sane_request_id_is_the_callers(given: str) -> None:
    assert Telemetry.request_id({"x-request-id": given}) == given


@pytest.mark.parametrize("given", ["", "x" * 129, "with space", "new\nline", "é"])
def test_any_other_request_id_is_replaced_by_a_fresh_one(given: str) -> None:
    fresh = Telemetry.request_id({"x-request-id": given})
    assert fresh != given and len(fresh) == 24 and int(fresh, 16) >= 0
    assert Telemetry.request_id({}) != Telemetry.request_id({})


def test_one_access_line_and_the_metrics_per_call(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    telemetry = Telemetry(access_log=logging.getLogger("meshgate.access"), metrics=metrics)
    call = call_state(READ, method=METHOD, metadata={"authorization": "Bearer mg_dev_secret"})
    call.code = grpc.StatusCode.UNAUTHENTICATED
    with caplog.at_level(logging.INFO, logger="meshgate.access"):
        telemetry.finish(call, 0.004)
    (record,) = [r for r in caplog.records if r.name == "meshgate.access"]
    assert record.getMessage() == "call"
    assert record.__dict__["request_id"] == call.request_id
    assert "mg_dev_secret" not in str(record.__dict__)
    sample = metrics.registry.get_sample_value
    assert (
        sample(
            "rpc_server_call_duration_seconds_count",
            {
                "rpc_system_name": "grpc",
                "rpc_method": METHOD.lstrip("/"),
                "rpc_status_code": "UNAUTHENTICATED",
                "error_type": "",
            },
        )
        == 1
    )
    assert (
        sample(
            "meshgate_auth_failures_total",
            {"rpc_method": METHOD.lstrip("/"), "code": "UNAUTHENTICATED"},
        )
        == 1
    )


@pytest.mark.parametrize(
    ("peer", "attributes"),
    [
        ("ipv4:10.1.2.3:5555", {"network.peer.address": "10.1.2.3", "network.peer.port": 5555}),
        ("ipv6:[::1]:5555", {"network.peer.address": "::1", "network.peer.port": 5555}),
        ("unix:/run/meshgate.sock", {"network.peer.address": "/run/meshgate.sock"}),
        ("something-else", {}),
        ("ipv4:nohost", {}),
    ],
)
def test_the_peer_of_a_span(peer: str, attributes: dict[str, str | int]) -> None:
    assert peer_attributes(peer) == attributes
