"""Metrics of the request path and its components, in a Prometheus registry per server.

The per-call cost is a dictionary lookup and a histogram observation; values
the components already count (cache hits, invalidations, queue depths) are
read only when scraped. `server/observability.py` exposes the registry.

Every label value comes from a fixed set: a registered method (or a route name of
the route policy file, or NO_ROUTE, for a sidecar's judged call), a status name, a
plan of the plan table, a rate class, a store, a service, an outcome. Nothing a
caller sends (a path, a key id, a peer identity, a namespace) is ever a label value:
each distinct value is a series kept until the process ends. `rpc_method` has one
form in every metric: `pkg.Service/Method`, without grpc's leading slash
(`method_label`). The route policy file is reloaded while the server runs, so the route
names a process has seen may grow with each new file: at most MAX_METHOD_LABELS distinct
`rpc_method` values are kept, later ones counted under OTHER_METHODS.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["MAX_METHOD_LABELS", "OTHER_METHODS", "LoopHistogram", "Metrics", "method_label"]

# distinct `rpc_method` values per process: meshgate's methods, and the route names of the
# route policy files loaded (1,000 each) over a few reloads that rename routes
MAX_METHOD_LABELS = 4096
OTHER_METHODS = "(other)"

# how late the event loop ran a timer (server/loop_lag.py): from a millisecond to a stall
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# the authentication step: microseconds from the cache, milliseconds from the key store
AUTH_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def method_label(method: str) -> str:
    """The `rpc_method` label of a method: grpc's `/pkg.Service/Method` without its leading
    slash (the OpenTelemetry conventions' fully qualified name); a sidecar route's name as
    it is (`GET,HEAD /api/orders` keeps its method list)."""
    return method[1:] if method.startswith("/") else method


_Labeled = tuple[str, str, Callable[[], Mapping[tuple[str, ...], float]], tuple[str, ...]]


class LoopHistogram:
    """A histogram written by the event loop's thread alone: an observation is a bisect and
    two additions, without prometheus_client's lock (measured: about 0.2 us against about
    1-4 us for `Histogram.observe`), read when scraped. For the steps every call runs."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        counts, total = list(self.counts), 0
        buckets = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            total += count
            buckets.append((bound, float(total)))
        return buckets


class _Callbacks(Collector):
    """Counters and gauges read from the components when scraped (no cost per call)."""

    def __init__(self) -> None:
        self.counters: list[tuple[str, str, Callable[[], float]]] = []
        self.gauges: list[_Labeled] = []
        self.labeled: list[_Labeled] = []
        self.histograms: list[tuple[str, str, str, Mapping[str, LoopHistogram]]] = []

    def collect(self) -> Iterable[Any]:
        for name, doc, read in self.counters:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], read())
            yield family
        for name, doc, read_many, labels in self.labeled:
            counter = CounterMetricFamily(name, doc, labels=list(labels))
            for values, value in read_many().items():
                counter.add_metric(list(values), value)
            yield counter
        for name, doc, read_many, labels in self.gauges:
            gauge = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in read_many().items():
                gauge.add_metric(list(values), value)
            yield gauge
        for name, doc, label, histograms in self.histograms:
            histogram_family = HistogramMetricFamily(name, doc, labels=[label])
            for label_value, histogram in histograms.items():
                histogram_family.add_metric([label_value], histogram.cumulative(), histogram.sum)
            yield histogram_family


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # distinct `rpc_method` values kept, the later ones counted under OTHER_METHODS
    max_method_labels: int = MAX_METHOD_LABELS

    def __post_init__(self) -> None:
        r = self.registry
        self.call_duration = Histogram(
            "rpc_server_call_duration_seconds",
            "rpc.server.call.duration: time from the first byte of a call to its status",
            ["rpc_system_name", "rpc_method", "rpc_status_code", "error_type"],
            buckets=_BUCKETS,
            registry=r,
        )
        # neither peer nor key: the access line and the audit trail name them (a label of
        # either would grow with keys x peers x methods)
        self.auth_failures = Counter(
            "meshgate_auth_failures_total",
            "UNAUTHENTICATED and PERMISSION_DENIED answers by method and code",
            ["rpc_method", "code"],
            registry=r,
        )
        self.malformed_requests = Counter(
            "meshgate_malformed_requests_total",
            "requests refused as malformed: a message that does not decode, or a header that"
            " is not UTF-8, by method and part (message, metadata)",
            ["rpc_method", "part"],
            registry=r,
        )
        self.refusals = Counter(
            "meshgate_refusals_total",
            "calls refused or failed, by status code and google.rpc.ErrorInfo reason"
            " (docs/api.md), meshgate's own calls and ext_authz checks alike",
            ["code", "reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "meshgate_rate_limited_total",
            "calls refused by a rate limit, by plan and route class",
            ["plan", "rate_class"],
            registry=r,
        )
        self.credits_debited = Counter(
            "meshgate_credits_debited_total", "credits debited, by plan", ["plan"], registry=r
        )
        self.limiter_fallbacks = Counter(
            "meshgate_rate_limiter_fallbacks_total",
            "rate-limit decisions taken without Redis (configured fallback)",
            registry=r,
        )
        self.dependency_up = Gauge(
            "meshgate_dependency_up",
            "1 when the dependency answered its last check",
            ["dependency"],
            registry=r,
        )
        self.dependency_latency = Gauge(
            "meshgate_dependency_latency_seconds",
            "latency of the last check",
            ["dependency"],
            registry=r,
        )
        self.serving = Gauge(
            "meshgate_service_serving",
            "1 when the service's health status is SERVING",
            ["service"],
            registry=r,
        )
        self.dry_run_denials = Counter(
            "meshgate_dry_run_denials_total",
            "calls a rule in dry run would have refused (and that went on under the rules in"
            " force), by method, kind of rule (route, method, plan, key) and the refusal's"
            " reason",
            ["rpc_method", "rule", "reason"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "meshgate_event_loop_lag_seconds",
            "how much later than asked the event loop ran a timer (sampled every 100 ms):"
            " the wait every call on this process had behind whatever held the loop",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._callbacks = _Callbacks()
        r.register(self._callbacks)
        # the authentication step's own latency, by `cache`: hit (this process's key cache),
        # miss (looked up in the key store, or refused as malformed before any lookup)
        self.authentication_duration = {
            cache: LoopHistogram(AUTH_BUCKETS) for cache in ("hit", "miss")
        }
        self._callbacks.histograms.append(
            (
                "meshgate_authentication_duration_seconds",
                "time the authentication step took to verify a presented key, by cache: hit"
                " (this process's key cache) or miss (the key store, or refused as malformed)",
                "cache",
                self.authentication_duration,
            )
        )
        self._durations: dict[tuple[str, str], Any] = {}
        self._refusals: dict[tuple[str, str], Any] = {}
        self._method_labels: dict[str, str] = {}

    def _method(self, method: str) -> str:
        """The `rpc_method` label of `method`: its `method_label`, while fewer than
        `max_method_labels` distinct ones were seen; OTHER_METHODS beyond."""
        label = self._method_labels.get(method)
        if label is None:
            if len(self._method_labels) >= self.max_method_labels:
                return OTHER_METHODS
            label = self._method_labels[method] = method_label(method)
        return label

    def observe_call(
        self, method: str, status: str, duration_s: float, *, error: bool = False
    ) -> None:
        """`method` is grpc's `/pkg.Service/Method` (or a sidecar route's name); the label is
        `method_label`'s. `error`: the status is a server error (`error_type`, empty
        otherwise, which Prometheus treats as absent)."""
        label = self._method(method)
        child = self._durations.get((label, status))
        if child is None:
            child = self._durations[(label, status)] = self.call_duration.labels(
                "grpc", label, status, status if error else ""
            )
        child.observe(duration_s)

    def auth_failure(self, method: str, status: str) -> None:
        """One UNAUTHENTICATED or PERMISSION_DENIED answer of `method`."""
        label = self._method(method)
        child = self._refusals.get((label, status))
        if child is None:
            child = self._refusals[(label, status)] = self.auth_failures.labels(label, status)
        child.inc()

    def dry_run_denial(self, method: str, rule: str, reason: str) -> None:
        """One call a rule in dry run would have refused (`rule`, `reason`: fixed sets of
        calls/dry_run.py)."""
        self.dry_run_denials.labels(self._method(method), rule, reason).inc()

    def counter_from(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._callbacks.counters.append((name, doc, read))

    def labeled_counter_from(
        self,
        name: str,
        doc: str,
        read: Callable[[], Mapping[tuple[str, ...], float]],
        labels: tuple[str, ...],
    ) -> None:
        self._callbacks.labeled.append((name, doc, read, labels))

    def gauge_from(
        self,
        name: str,
        doc: str,
        read: Callable[[], Mapping[tuple[str, ...], float]],
        labels: tuple[str, ...] = (),
    ) -> None:
        self._callbacks.gauges.append((name, doc, read, labels))
