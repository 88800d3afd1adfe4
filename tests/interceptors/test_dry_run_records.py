"""What records a dry run stays bounded: the `rpc_method` label values of every metric
(route names change with each reloaded route file), and the audit events of a rate limit
in dry run (one per key, method, rule and reason a minute, the state for it capped)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import generate_latest

from calls.dry_run import DryRunDenial, DryRunReason, DryRunRule
from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.audit import DRY_RUN_EVENT_INTERVAL_S, DRY_RUN_EVENT_KEYS, AuditTrail
from interceptors.metrics import MAX_METHOD_LABELS, OTHER_METHODS, Metrics
from server.backends import Backends
from storage.audit.log import AuditLog
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.organizations import Organization
from tests.support.scrape import series


def test_the_rpc_method_label_takes_at_most_a_fixed_number_of_values() -> None:
    """Route files that name their routes anew on every reload: the label stops growing at
    `max_method_labels` (MAX_METHOD_LABELS, 4,096, by default; 100 here, for speed), the rest
    counted under OTHER_METHODS."""
    assert Metrics().max_method_labels == MAX_METHOD_LABELS == 4096
    metrics = Metrics(max_method_labels=100)
    for file in range(5):
        for route in range(60):
            method = f"GET /file{file}/route{route}"
            metrics.observe_call(method, "OK", 0.001)
            metrics.auth_failure(method, "PERMISSION_DENIED")
            metrics.dry_run_denial(method, DryRunRule.ROUTE, DryRunReason.PERMISSION_DENIED_LEVEL)
    text = generate_latest(metrics.registry).decode()
    for name in (
        "rpc_server_call_duration_seconds_count",
        "meshgate_auth_failures_total",
        "meshgate_dry_run_denials_total",
    ):
        values = {s for s in series(text) if s.startswith(name + "{")}
        assert len(values) == 100 + 1, name
        assert any(f'rpc_method="{OTHER_METHODS}"' in s for s in values)
    assert 'rpc_method="GET /file0/route0"' in text


def _dry_run_call(organization_id: str, key_id: str) -> CallState:
    key = VerifiedKey(
        key_id=key_id,
        organization_id=organization_id,
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=frozenset(),
        valid_until=None,
    )
    organization = Organization(
        internal_id="-", organization_id=organization_id, name="o", plan="free",
        created_at=datetime.now(UTC),
    )  # fmt: skip
    call = CallState(
        method="/meshgate.v1.KeyService/ListKeys",
        policy=Policy(access=Access.API_KEY, permission="read"),
        request_id="r",
        metadata={},
        peer_address="-",
        principal=Principal(key=key, organization=organization),
    )
    call.admitted = True
    call.dry_run = (DryRunDenial(DryRunRule.KEY, DryRunReason.RATE_LIMITED),)
    return call


def test_dry_run_audit_events_are_one_a_minute_per_key_and_their_state_is_bounded(
    backends: Backends,
) -> None:
    now = [0.0]
    log = AuditLog(mongo=backends.mongo)  # never flushed: what is queued is what was recorded
    trail = AuditTrail(log=log, clock=lambda: now[0])
    for _ in range(50):  # a key over its limit in dry run, call after call: one event
        trail.finish(_dry_run_call("org_a", "key_a"), 0.001)
    assert log.depth == 1
    now[0] += DRY_RUN_EVENT_INTERVAL_S  # a minute later: one more
    trail.finish(_dry_run_call("org_a", "key_a"), 0.001)
    assert log.depth == 2
    for index in range(DRY_RUN_EVENT_KEYS + 500):  # keys without end: the state stays capped
        trail.finish(_dry_run_call("org_a", f"key_{index}"), 0.001)
    assert len(trail._dry_run_events) == DRY_RUN_EVENT_KEYS
    assert log.depth == 2 + DRY_RUN_EVENT_KEYS + 500


def test_every_dry_run_reason_is_the_reason_of_a_refusal() -> None:
    """A dry-run denial reads the same as the refusal the enforced rule gives (docs/api.md)."""
    from calls.dry_run import DryRunReason
    from storage.core.errors import Reason

    assert {r.value for r in DryRunReason} <= {r.value for r in Reason}
