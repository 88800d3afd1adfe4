"""The loop-thread histogram exposes what prometheus_client's Histogram exposes for the same
observations (bucket edges included), under the same name and labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from interceptors.metrics import AUTH_BUCKETS, Metrics


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


def test_the_loop_histogram_matches_prometheus_clients() -> None:
    values = [0.0, 0.00001, 0.0000100001, 0.0003, 0.001, 0.7, 1.0, 3.0, *AUTH_BUCKETS]
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "meshgate_authentication_duration_seconds",
        "reference",
        ["cache"],
        buckets=AUTH_BUCKETS,
        registry=reference_registry,
    )
    metrics = Metrics()
    for value in values:
        reference.labels("miss").observe(value)
        metrics.authentication_duration["miss"].observe(value)
    reference.labels("hit")  # no observation: the series exist with zeros in both
    name = "meshgate_authentication_duration_seconds_"
    ours = _samples(generate_latest(metrics.registry).decode(), name)
    theirs = _samples(generate_latest(reference_registry).decode(), name)
    assert sorted(s for s in ours if "_created" not in s) == sorted(
        s for s in theirs if "_created" not in s
    )
