"""deploy/grafana/meshgate.json: every query parses and names only what the server exports;
and the production overlay's PodMonitor scrapes what the dashboard reads.

Each PromQL expression of the dashboard (panel targets and template variables), with the
dashboard's variables set to plain values, is written as a recording rule and checked by
`promtool check rules` (Prometheus's own parser). Then every metric it names must be one a
live server exports: read from its /metrics after calls that make the lazily created
series exist (a histogram's `_bucket`, `_sum` and `_count`, a counter's `_total`), and
every label it matches or groups by must be one of that metric's labels, or one the scrape
adds. docs/operations.md describes each panel by its title.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest
import yaml
from meshgate.v1 import (
    common_pb2,
    key_service_pb2,
    namespace_service_pb2,
    options_pb2,
    organization_service_pb2,
)

from server.app import RunningServer
from server.backends import Backends
from tests.deploy.test_manifests import DEPLOY, rendered
from tests.server.test_observability import scrape
from tests.support.clients import auth, raw_unary
from tests.support.credits import exhaust_credits
from tests.support.processes import ROOT
from tests.support.tenants import MakeTenant, Tenant
from tests.support.waiting import eventually

DASHBOARD = ROOT / "deploy" / "grafana" / "meshgate.json"
# what the dashboard's variables stand for when the queries are checked
VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "3h",
    "$job": ".*",
    "$instance": ".*",
}
# labels Prometheus adds at scrape time (a PodMonitor adds namespace, pod, container too)
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}
_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and the template variables' label_values."""
    found = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            found.append(match.group(1))
    return found


def concrete(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the check does not know: {expr}"
    return expr


_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, the labels its matcher names) for each metric the expression reads: what is
    left once strings, grouping lists and ranges are taken out, where a name is not a
    function or aggregation (those are followed by a parenthesis) nor a keyword."""
    plain = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    plain = re.sub(_GROUPING, " ", plain)
    plain = re.sub(r"\[[^\]]*\]", " ", plain)
    found: list[tuple[str, set[str]]] = []
    for match in re.finditer(rf"({_NAME})\s*(\{{[^}}]*\}})?", plain):
        name, matcher = match.group(1), match.group(2) or ""
        if name in _NOT_METRICS or plain[match.end() :].lstrip().startswith("("):
            continue
        labels = set(re.findall(rf"({_NAME})\s*(?:=~|!~|!=|=)", matcher))
        found.append((name, labels))
    return found


def grouping_labels(expr: str) -> set[str]:
    lists = re.findall(_GROUPING, expr)
    return {label.strip() for group in lists for label in group.split(",") if label.strip()}


def exported(text: str) -> dict[str, set[str] | None]:
    """Series names of a /metrics page and their label names; None for a series declared
    by a `# TYPE` line (a histogram's three series, a counter's _total) with no sample yet."""
    series: dict[str, set[str] | None] = {}
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            for suffix in suffixes.get(kind, ("",)):
                series.setdefault(name if name.endswith(suffix) else name + suffix, None)
        elif line and not line.startswith("#"):
            match = re.match(rf"({_NAME})(?:\{{(.*)\}})? ", line)
            assert match, line
            labels = set(re.findall(rf'({_NAME})="', match.group(2) or ""))
            series[match.group(1)] = (series.get(match.group(1)) or set()) | labels
    return series


def test_the_dashboard_is_well_formed() -> None:
    dashboard = load()
    nested = [p for row in dashboard["panels"] if row["type"] == "row" for p in row["panels"]]
    ids = [panel["id"] for panel in [*dashboard["panels"], *nested]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "meshgate"
    for panel in panels(dashboard):
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "job", "instance"}


def test_every_query_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is needed: run `make test-deps` (Debian's prometheus package)")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": concrete(expr)}
                    for i, expr in enumerate(expressions(load()))
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules['groups'][0]['rules'])} rules found" in result.stdout


async def make_every_series_exist(
    tenant: Tenant, make_tenant: MakeTenant, backends: Backends
) -> None:
    """Calls that create the series created on first use: an admitted call, refusals (a bad
    key, a rate limit, credits), a malformed message, a crossed credit threshold."""
    namespace = await tenant.namespace()
    await tenant.namespaces.GetNamespace(
        namespace_service_pb2.GetNamespaceRequest(), metadata=auth(tenant.admin, namespace.name)
    )
    get_org = raw_unary(tenant.channel, "/meshgate.v1.OrganizationService/GetOrganization")
    body = organization_service_pb2.GetOrganizationRequest().SerializeToString()
    slow = await tenant.keys.CreateKey(
        key_service_pb2.CreateKeyRequest(
            name="slow",
            environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
            permissions=[options_pb2.PERMISSION_READ],
            rate_limit=key_service_pb2.RateLimit(per_second=0.01, burst=1),
        ),
        metadata=auth(tenant.admin),
    )
    for request, metadata in (
        (body, auth("mg_development_" + secrets.token_urlsafe(32))),
        (body, auth(slow.secret)),
        (body, auth(slow.secret)),
        (b"\xff\xff\xff", auth(tenant.admin)),
    ):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await get_org(request, metadata=metadata)
    spent = await make_tenant()
    spent_namespace = await spent.namespace()
    await exhaust_credits(spent, backends)
    with pytest.raises(grpc.aio.AioRpcError):
        await spent.namespaces.GetNamespace(
            namespace_service_pb2.GetNamespaceRequest(),
            metadata=auth(spent.admin, spent_namespace.name),
        )


async def test_every_query_names_what_a_live_server_exports(
    server: RunningServer, tenant: Tenant, make_tenant: MakeTenant, backends: Backends
) -> None:
    await make_every_series_exist(tenant, make_tenant, backends)
    queries = [concrete(expr) for expr in expressions(load())]
    wanted = {name for expr in queries for name, _ in selectors(expr)}

    async def all_sampled() -> bool:  # the periodic ones (work queue depth) included
        text = await asyncio.to_thread(scrape, server.metrics_port)
        series = exported(text)
        return all(series.get(name, set()) is not None for name in wanted)

    await eventually(all_sampled, timeout_s=15, interval_s=0.5)
    series = exported(await asyncio.to_thread(scrape, server.metrics_port))
    unknown = sorted(wanted - set(series))
    assert not unknown, f"the dashboard names metrics the server does not export: {unknown}"
    labels_of = {name: labels or set() for name, labels in series.items()}
    for expr in queries:
        read = selectors(expr)
        available = set(SCRAPE_LABELS) | {"le"}
        for name, labels in read:
            assert labels <= labels_of[name] | SCRAPE_LABELS, (name, labels, expr)
            available |= labels_of[name]
        missing = grouping_labels(expr) - available
        assert not missing, (missing, expr)


def test_the_docs_describe_every_panel() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Dashboard", 1)[1].split("\n## ", 1)[0]
    for panel in panels(load()):
        assert f"**{panel['title']}**" in section, panel["title"]


def test_the_production_overlay_scrapes_every_pod_and_lets_traces_out() -> None:
    """Its PodMonitor selects the Deployment's pods and scrapes the container port the
    metrics listen on, which the NetworkPolicy opens to the monitoring namespace; its
    OTLP collector's port is open for egress."""
    docs = list(rendered(DEPLOY / "overlays" / "production"))
    kinds = {d["kind"]: d for d in docs}
    monitor, deployment = kinds["PodMonitor"], kinds["Deployment"]
    pod = deployment["spec"]["template"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= pod["metadata"]["labels"].items()
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["port"] in ports
    config = kinds["ConfigMap"]["data"]
    assert config["MESHGATE_METRICS_LISTEN"].endswith(f":{ports[endpoint['port']]}")
    policy = kinds["NetworkPolicy"]["spec"]

    def opens(rules: list[dict[str, Any]], namespace: str, port: int) -> bool:
        return any(
            any(
                peer.get("namespaceSelector", {})
                .get("matchLabels", {})
                .get("kubernetes.io/metadata.name")
                == namespace
                for peer in rule.get("from", rule.get("to", []))
            )
            and any(p["port"] == port for p in rule["ports"])
            for rule in rules
        )

    assert opens(policy["ingress"], "monitoring", ports[endpoint["port"]])
    assert config["OTEL_TRACES_EXPORTER"] == "otlp"
    collector = urlparse(config["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert collector.hostname and collector.hostname.endswith(".monitoring")
    assert opens(policy["egress"], "monitoring", collector.port or 4317)
