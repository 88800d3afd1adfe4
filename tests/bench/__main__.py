"""`make bench` / `python -m tests.bench`: the security chain against a bare grpc.aio server.

Everything runs in one go on this machine, so the figures that matter are
ratios measured in the same run (the machine is noisy):

1. Rounds, alternating: a bare grpc.aio echo server (same grpcio, same mTLS
   settings); `meshgate serve` in its default configuration (access log at
   INFO, written to a file rather than a terminal; metrics on; tracing off),
   as users run it; and `meshgate serve` with the access log off
   (`MESHGATE_LOG_LEVEL=WARNING`). Each is pinned to core 0 when `taskset`
   exists, driven by a load generator in its own process on core 1. The
   meshgate call is `NamespaceService/GetNamespace`: namespaced, READ, cost 1,
   so it passes every step (mTLS, authentication, identity, permission,
   namespace, rate limit, credits, usage) and does no storage I/O of its own.
   Reported: requests/s, p50/p99 latency, server CPU time per request, and
   each meshgate row's ratio to the bare echo of the same run; then the same
   with one call in flight (p50 overhead).
   The default-configuration meshgate also answers Envoy's ext_authz `Check`
   for a route whose policy is GetNamespace's (the route policy file): the
   per-Check figures sit next to the direct call's, with their ratios to the
   bare echo.
2. Cold paths: the first call with a key no replica has cached; revocation
   propagation between two replicas sharing Redis (p50/p99).
3. `meshgate serve --workers N` for N = 1, 2 (default configuration): server
   CPU per request at a fixed open-loop offered rate below saturation
   (`--rate`, 500 calls/s: below what one worker answers on a
   busy 2-core machine), where equal figures mean the workers do not
   contend; and, for reference, closed-loop throughput (on 2 cores shared with
   the load generator it cannot show scaling).
4. Webhook delivery: for N tasks submitted one after another, the time from
   `SubmitIngestion` to the signed `task.completed` event arriving at a
   receiver on loopback (p50/p95/max); the task and webhook workers of one
   `meshgate serve` with its default settings (poll interval included).
5. Backup and restore (tests/bench/backup_restore.py): ExportNamespace and
   ImportNamespace of 10,000 documents and 10,000 points, items per second.
6. The load figure (tests/bench/load_documents.py): `--documents` documents
   into one namespace through the API, BatchCreateDocuments of 100, on a
   `meshgate serve --dev` with every store embedded (as `make run`): the total
   time, the per-document cost of the first and the last batches, and single
   CreateDocument / GetDocument / ListDocuments calls into the empty namespace
   and at the end.

A table goes to stdout and JSON to `--out` (default bench-results.json).
`--smoke` runs every part for a fraction of a second (used by `make test` so
the harness cannot rot); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from meshgate.v1 import (
    common_pb2,
    document_service_pb2,
    key_service_pb2,
    key_service_pb2_grpc,
    namespace_service_pb2,
    options_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

from certs.dev_pki import CLIENT_ID, issue_pki
from server.backends import open_backends
from server.bootstrap import bootstrap
from server.embedded import EmbeddedMongo
from server.settings import Secret, Settings
from storage.tenancy.keys import KeyStore
from storage.tenancy.namespaces import NamespaceStore
from tests.bench import backup_restore, inplace, load_documents
from tests.bench.inplace import PerfWindow, ProbeWindow, Watcher
from tests.support.processes import ROOT, RedisServer, free_port
from tests.support.waiting import wait_until
from tests.support.webhooks import Received, Receiver

GET_NAMESPACE = "/meshgate.v1.NamespaceService/GetNamespace"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
# the route a sidecar asks about: GetNamespace's policy, read from the protos' option
UPSTREAM = "/bench.v1.Upstream/Get"
ROUTES = {
    "routes": [
        {"grpc": UPSTREAM, "permission": "read", "namespaced": True, "cost": 1,
         "rate_class": "metadata"}
    ]
}  # fmt: skip
# the bench client asks as the sidecar, for any organization and principal
BINDINGS = {"sidecars": [{"identity": CLIENT_ID, "organizations": "*", "principals": "*"}]}
ECHO = "/bench.Echo/Echo"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    port: int
    # where the server's probe (tests/bench/probe.py) writes a window's figures, if probed
    probe: Path | None = None

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def pids(self) -> list[int]:
        """The process and its children (workers)."""
        found = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with suppress(OSError):
            found += [int(p) for p in children.read_text().split()]
        return found

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / CLK_TCK

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class Env:
    certs: Path
    settings: Settings
    namespace_id: str
    reader: str
    admin: str
    organization_id: str
    taskset: str | None
    procs: list[Proc] = field(default_factory=list)

    def pin(self, core: int | None) -> list[str]:
        return [self.taskset, "-c", str(core)] if self.taskset and core is not None else []


def meshgate_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    assert settings.mongodb_uri and settings.redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    env.update(
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        MESHGATE_LISTEN=f"127.0.0.1:{port}",
        MESHGATE_TLS_CERT=str(settings.tls_cert),
        MESHGATE_TLS_KEY=str(settings.tls_key),
        MESHGATE_TLS_CLIENT_CA=str(settings.tls_client_ca),
        MESHGATE_MONGODB_URI=settings.mongodb_uri.reveal(),
        MESHGATE_MONGODB_DATABASE=settings.mongodb_database,
        MESHGATE_REDIS_URL=settings.redis_url.reveal(),
        MESHGATE_QDRANT_URL=":memory:",
        MESHGATE_DATA_DIR=str(settings.data_dir),
        MESHGATE_METRICS_LISTEN="127.0.0.1:0",
    )
    env.update(extra)
    return env


def wait_ready(target: str, certs: Path, proc: subprocess.Popen[bytes], method: str) -> None:
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / "client-key.pem").read_bytes(),
        (certs / "client.pem").read_bytes(),
    )
    with grpc.secure_channel(target, credentials) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)

        def answering() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                call(b"", timeout=1)
            except grpc.RpcError as error:
                return error.code() != grpc.StatusCode.UNAVAILABLE  # even with a refusal
            return True

        wait_until(
            answering,
            timeout_s=60,
            interval_s=0.1,
            failure=lambda: f"{target} never became ready",
        )


def probed(probe: Path | None) -> list[str]:
    """The command prefix that runs a server module, under tests/bench/probe.py if `probe`."""
    return ["-m"] if probe is None else ["-m", "tests.bench.probe", "--out", str(probe)]


def start_meshgate(
    env: Env,
    *,
    core: int | None,
    workers: int = 1,
    log: Path | None = None,
    probe: Path | None = None,
    **extra: str,
) -> Proc:
    """`meshgate serve`; its log (the access log at INFO) goes to the file `log`, else to
    this process's stderr. With `probe`, under tests/bench/probe.py (figures to `probe`)."""
    port = free_port()
    command = [*env.pin(core), sys.executable, *probed(probe), "server.cli", "serve"]
    if workers != 1:
        command += ["--workers", str(workers)]
    stderr = log.open("ab") if log is not None else None
    try:
        process = subprocess.Popen(
            command, cwd=ROOT, env=meshgate_env(env.settings, port, **extra), stderr=stderr
        )
    finally:
        if stderr is not None:
            stderr.close()  # the child has its own descriptor
    proc = Proc(process, port, probe)
    env.procs.append(proc)
    try:
        wait_ready(proc.target, env.certs, process, GET_NAMESPACE)
    except RuntimeError as exc:
        said = log.read_text()[-3000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{exc}; its log ends with:\n{said}") from None
    return proc


def start_echo(env: Env, *, core: int | None, probe: Path | None = None) -> Proc:
    port = free_port()
    command = [*env.pin(core), sys.executable, *probed(probe), "tests.bench.echo_server"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--certs", str(env.certs)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    proc = Proc(process, port, probe)
    env.procs.append(proc)
    wait_ready(proc.target, env.certs, process, ECHO)
    return proc


def load(
    env: Env,
    proc: Proc,
    *,
    meshgate: bool,
    check: bool = False,
    inflight: int,
    channels: int,
    warmup: float,
    duration: float,
    core: int | None,
    rate: float = 0.0,
    watchers: Sequence[Watcher] = (),
    probe: bool = True,
) -> dict[str, Any]:
    """Run the load generator against `proc` (open loop at `rate` calls/s when given);
    server CPU is sampled on the measured window, and so are the server's probe (GC pauses;
    when it has one and `probe`) and the `watchers`."""
    watching = [*watchers]
    if proc.probe is not None and probe:
        watching.insert(0, ProbeWindow(pid=proc.process.pid, out=proc.probe))
    command = [
        *env.pin(core),
        sys.executable,
        "-m",
        "tests.bench.loadgen",
        "--target",
        proc.target,
        "--certs",
        str(env.certs),
        "--inflight",
        str(inflight),
        "--channels",
        str(channels),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--rate",
        str(rate),
    ]
    if check:
        command += ["--method", CHECK, "--request-hex", check_request(env).hex()]
    elif meshgate:
        request = namespace_service_pb2.GetNamespaceRequest().SerializeToString().hex()
        command += ["--method", GET_NAMESPACE, "--request-hex", request]
        command += [
            "--header",
            f"authorization: Bearer {env.reader}",
            "--header",
            f"x-namespace: {env.namespace_id}",
        ]
    else:
        command += ["--method", ECHO, "--request-hex", ""]
    generator = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": f"{ROOT}"}
    )
    assert generator.stdout is not None
    cpu_start = cpu_end = 0.0
    result: dict[str, Any] = {}
    watched: dict[str, Any] = {}
    for raw in generator.stdout:
        line = raw.decode().strip()
        if line == "MEASURE_START":
            cpu_start = proc.cpu_seconds()
            for watcher in watching:
                watcher.start()
        elif line == "MEASURE_END":
            cpu_end = proc.cpu_seconds()
            for watcher in watching:
                watched.update(watcher.stop())
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    if generator.wait() != 0 or not result:
        raise RuntimeError("the load generator failed")
    result.update(watched)
    requests = max(1, int(result["requests"]))
    result["cpu_us_per_request"] = (cpu_end - cpu_start) / requests * 1e6
    return result


def check_request(env: Env) -> bytes:
    """A CheckRequest as Envoy's ext_authz filter sends it for a gRPC call to UPSTREAM."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.principal = CLIENT_ID
    http = request.attributes.request.http
    http.method, http.path, http.protocol = "POST", UPSTREAM, "HTTP/2"
    http.headers.update(
        {
            ":path": UPSTREAM,
            "content-type": "application/grpc",
            "authorization": f"Bearer {env.reader}",
            "x-namespace": env.namespace_id,
        }
    )
    encoded: bytes = request.SerializeToString()
    return encoded


def check_allows(env: Env, proc: Proc) -> None:
    """The Check arm measures admissions, not refusals."""
    with client_channel(env, proc.target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CHECK)
        response = external_auth_pb2.CheckResponse.FromString(call(check_request(env), timeout=10))
    if not response.HasField("ok_response"):
        raise RuntimeError(f"the bench's Check is refused: {response.status.message}")


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rounds)


SUMMARY_KEYS = ("rps", "p50_us", "p99_us", "p999_us", "max_us", "cpu_us_per_request")


def gc_pauses(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The collector's pauses over every measured window of an arm (the probe's figures):
    per generation the count, the total and the longest."""
    merged: dict[str, dict[str, float]] = {}
    for run in rounds:
        for generation, figures in run.get("probe", {}).get("gc", {}).items():
            into = merged.setdefault(generation, {"count": 0, "total_ms": 0.0, "longest_ms": 0.0})
            into["count"] += figures["count"]
            into["total_ms"] += figures["total_ms"]
            into["longest_ms"] = max(into["longest_ms"], figures["longest_ms"])
    calls = sum(int(run["requests"]) for run in rounds)
    return {
        "gc": merged,
        "calls": calls,
        "longest_ms": max((g["longest_ms"] for g in merged.values()), default=0.0),
    }


def in_place(
    env: Env,
    args: argparse.Namespace,
    servers: dict[str, Proc],
    workdir: Path,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """Each server in turn (bare echo, meshgate default, meshgate log off: running under the
    probe) at `--in-place-rate` calls/s offered (open loop): over the window, the CPU by
    library (perf, where it works), the loop's iterations and callbacks, the GC figures."""
    perf = inplace.perf_available()
    arms: dict[str, dict[str, Any]] = {}
    for name, proc in servers.items():
        assert proc.probe is not None
        watchers: list[Watcher] = [
            ProbeWindow(pid=proc.process.pid, out=proc.probe, loop=True, collect=True)
        ]
        if perf is None:
            watchers.append(PerfWindow(pid=proc.process.pid, data=workdir / f"{name}.perf"))
        arms[name] = load(
            env,
            proc,
            meshgate=name != "bare",
            inflight=1,
            channels=2,
            warmup=warmup,
            duration=duration,
            core=1,
            rate=args.in_place_rate,
            watchers=watchers,
            probe=False,
        )
    if args.profile:  # one more window per meshgate server, under cProfile
        args.profile.mkdir(parents=True, exist_ok=True)
        for name in ("meshgate", "meshgate_log_off"):
            proc = servers[name]
            assert proc.probe is not None
            stats = args.profile / f"{name}.prof"
            profiled = load(
                env,
                proc,
                meshgate=True,
                inflight=1,
                channels=2,
                warmup=warmup,
                duration=duration,
                core=1,
                rate=args.in_place_rate,
                watchers=[ProbeWindow(pid=proc.process.pid, out=proc.probe, profile=stats)],
                probe=False,
            )
            arms[name]["profile"] = {"stats": str(stats), "requests": profiled["requests"]}
    return {"rate": args.in_place_rate, "perf": perf, "arms": arms}


async def prepare(workdir: Path, redis: RedisServer, mongo_uri: str) -> Env:
    certs = workdir / "certs"
    issue_pki(certs)
    settings = Settings(
        data_dir=workdir / "data",
        tls_cert=certs / "server.pem",
        tls_key=certs / "server-key.pem",
        tls_client_ca=certs / "ca.pem",
        mongodb_uri=Secret(mongo_uri),
        mongodb_database="meshgate_bench",
        redis_url=Secret(redis.url),
        qdrant_url=":memory:",
    )
    backends = await open_backends(settings, with_qdrant=False)
    try:
        admin = await bootstrap(
            backends, name="bench", plan="enterprise", environment="development"
        )
        from storage.tenancy.organizations import OrganizationStore

        org = await OrganizationStore(mongo=backends.mongo).get(admin.organization_id)
        namespace = await NamespaceStore(mongo=backends.mongo).create(
            internal_id=org.internal_id, name="bench", environment="development"
        )
        _, reader = await KeyStore(mongo=backends.mongo).create(
            organization_id=admin.organization_id,
            name="bench reader",
            environment="development",
            permissions=frozenset({"read"}),
            namespace_ids=[],
            expires_at=None,
        )
    finally:
        await backends.close()
    return Env(
        certs=certs,
        settings=settings,
        namespace_id=namespace.namespace_id,
        reader=reader,
        admin=admin.secret,
        organization_id=admin.organization_id,
        taskset=shutil.which("taskset"),
    )


def client_channel(env: Env, target: str) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        (env.certs / "ca.pem").read_bytes(),
        (env.certs / "client-key.pem").read_bytes(),
        (env.certs / "client.pem").read_bytes(),
    )
    return grpc.secure_channel(target, credentials)


def new_key(env: Env, channel: grpc.Channel) -> key_service_pb2.CreateKeyResponse:
    stub = key_service_pb2_grpc.KeyServiceStub(channel)
    request = key_service_pb2.CreateKeyRequest(
        name="bench",
        environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
        permissions=[options_pb2.PERMISSION_READ],
    )
    return stub.CreateKey(request, metadata=(("authorization", f"Bearer {env.admin}"),))


def get_namespace(channel: grpc.Channel, env: Env, secret: str) -> grpc.StatusCode:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GET_NAMESPACE)
    metadata = (("authorization", f"Bearer {secret}"), ("x-namespace", env.namespace_id))
    try:
        call(b"", metadata=metadata, timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def cold_and_revocation(env: Env, a: Proc, b: Proc, samples: int) -> dict[str, float]:
    cold: list[float] = []
    warm: list[float] = []
    propagation: list[float] = []
    with client_channel(env, a.target) as ch_a, client_channel(env, b.target) as ch_b:
        for _ in range(samples):
            created = new_key(env, ch_a)
            t0 = time.perf_counter()
            assert (
                get_namespace(ch_b, env, created.secret) == grpc.StatusCode.OK
            )  # B has never seen it
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert get_namespace(ch_b, env, created.secret) == grpc.StatusCode.OK  # now cached on B
            warm.append(time.perf_counter() - t0)
            stub = key_service_pb2_grpc.KeyServiceStub(ch_a)
            revoked_at = time.perf_counter()
            stub.RevokeKey(
                key_service_pb2.RevokeKeyRequest(key_id=created.key.key_id),
                metadata=(("authorization", f"Bearer {env.admin}"),),
            )
            while get_namespace(ch_b, env, created.secret) == grpc.StatusCode.OK:
                if time.perf_counter() - revoked_at > 5:
                    raise RuntimeError("revocation did not propagate within 5 s")
            propagation.append(time.perf_counter() - revoked_at)
    propagation.sort()
    return {
        "cold_first_call_p50_us": statistics.median(cold) * 1e6,
        "warm_call_p50_us": statistics.median(warm) * 1e6,
        "revocation_p50_ms": statistics.median(propagation) * 1e3,
        "revocation_p99_ms": propagation[min(len(propagation) - 1, int(0.99 * len(propagation)))]
        * 1e3,
        "revocation_samples": float(len(propagation)),
    }


def webhook_delivery(env: Env, proc: Proc, tasks: int) -> dict[str, float]:
    """Submit `tasks` one-document ingestion tasks one after another, each once the previous
    one's `task.completed` event has arrived, signed, at a receiver on 127.0.0.1."""
    receiver = Receiver().start()
    md = (("authorization", f"Bearer {env.admin}"), ("x-namespace", env.namespace_id))
    latencies: list[float] = []
    try:
        with client_channel(env, proc.target) as channel:
            created = webhook_service_pb2_grpc.WebhookServiceStub(channel).CreateWebhook(
                webhook_service_pb2.CreateWebhookRequest(
                    webhook=webhook_service_pb2.Webhook(
                        url=receiver.url("/bench"), event_types=["task.completed"]
                    )
                ),
                metadata=md,
            )
            receiver.endpoint("/bench", created.secret)
            submit = task_service_pb2_grpc.TaskServiceStub(channel).SubmitIngestion
            for i in range(tasks):
                document = document_service_pb2.Document(document_id=f"bench-{i}")
                started = time.monotonic()
                task_id = submit(
                    task_service_pb2.SubmitIngestionRequest(documents=[document]), metadata=md
                ).task.task_id
                found: list[Received] = []

                def arrived(task_id: str = task_id, found: list[Received] = found) -> bool:
                    found[:] = [
                        r
                        for r in receiver.delivered("/bench").values()
                        if r.payload["data"]["task_id"] == task_id
                    ]
                    return bool(found)

                wait_until(
                    arrived,
                    timeout_s=30,
                    interval_s=0.002,
                    failure=lambda: "a webhook delivery did not arrive within 30 s",
                )
                latencies.append((found[0].arrived - started) * 1e3)
        if any(not r.valid for r in receiver.requests("/bench")):
            raise RuntimeError("a webhook delivery failed its signature check")
    finally:
        receiver.stop()
    latencies.sort()
    return {
        "deliveries": float(len(latencies)),
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)],
        "max_ms": latencies[-1],
    }


def workers_comparison(
    env: Env, args: argparse.Namespace, log: Path, warmup: float, duration: float
) -> dict[str, Any]:
    """`--workers 1` and `--workers 2` (default configuration, unpinned): server CPU per
    request at a fixed open-loop rate below saturation (equal figures: the workers do not
    contend), then closed-loop throughput for reference."""
    scaling: dict[str, Any] = {"rate": args.rate}
    for workers in (1, 2):
        proc = start_meshgate(env, core=None, workers=workers, log=log)
        # what the process spends with no calls at all (its background jobs), per second
        idle_from, idle_start = proc.cpu_seconds(), time.monotonic()
        time.sleep(duration)
        idle_cpu = (proc.cpu_seconds() - idle_from) / (time.monotonic() - idle_start)
        scaling[f"idle_cpu_ms_per_s_{workers}"] = idle_cpu * 1e3
        scaling[f"open_{workers}"] = load(
            env,
            proc,
            meshgate=True,
            inflight=1,
            channels=2,
            warmup=warmup,
            duration=duration,
            core=None,
            rate=args.rate,
        )
        scaling[str(workers)] = load(
            env,
            proc,
            meshgate=True,
            inflight=args.inflight * workers,
            channels=args.channels * 2,
            warmup=warmup,
            duration=duration,
            core=None,
        )
        proc.stop()
    scaling["throughput_ratio"] = {"rps": scaling["2"]["rps"] / scaling["1"]["rps"]}
    scaling["open_cpu_ratio"] = (
        scaling["open_2"]["cpu_us_per_request"] / scaling["open_1"]["cpu_us_per_request"]
    )
    for workers in (1, 2):  # CPU per request less the idle background share
        idle_per_request_us = scaling[f"idle_cpu_ms_per_s_{workers}"] * 1e3 / args.rate
        scaling[f"open_{workers}"]["cpu_us_per_request_less_idle"] = (
            scaling[f"open_{workers}"]["cpu_us_per_request"] - idle_per_request_us
        )
    return scaling


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    smoke = args.smoke
    warmup, duration = (0.2, 0.3) if smoke else (args.warmup, args.duration)
    rounds = 1 if smoke else args.rounds
    with tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer.on_free_port(workdir)
        redis.start()
        mongo = EmbeddedMongo(data_dir=None)
        env: Env | None = None
        try:
            env = asyncio.run(prepare(workdir, redis, mongo.start()))
            results: dict[str, Any] = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
                "pinned": bool(env.taskset),
                "smoke": smoke,
            }
            access_log = workdir / "meshgate.log"
            bare = start_echo(env, core=0, probe=workdir / "bare.probe")
            routes = workdir / "routes.json"
            routes.write_text(json.dumps(ROUTES))
            bindings = workdir / "bindings.json"
            bindings.write_text(json.dumps(BINDINGS))
            mesh = start_meshgate(
                env,
                core=0,
                log=access_log,
                probe=workdir / "meshgate.probe",
                MESHGATE_EXT_AUTHZ_PEERS=CLIENT_ID,
                MESHGATE_EXT_AUTHZ_BINDINGS_FILE=str(bindings),
                MESHGATE_ROUTE_POLICY_FILE=str(routes),
            )
            check_allows(env, mesh)
            quiet = start_meshgate(
                env, core=0, probe=workdir / "quiet.probe", MESHGATE_LOG_LEVEL="WARNING"
            )
            servers = {"bare": bare, "meshgate": mesh, "meshgate_log_off": quiet}
            if args.only == "in-place":
                results["in_place"] = in_place(env, args, servers, workdir, warmup, duration)
                return results
            arms = (
                ("bare", bare),
                ("meshgate", mesh),
                ("meshgate_log_off", quiet),
                ("check", mesh),
            )
            loaded: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in arms}
            for _ in range(rounds):  # A/B/C/A/B/C
                for name, proc in arms:
                    loaded[name].append(
                        load(
                            env,
                            proc,
                            meshgate=name in ("meshgate", "meshgate_log_off"),
                            check=name == "check",
                            inflight=args.inflight,
                            channels=args.channels,
                            warmup=warmup,
                            duration=duration,
                            core=1,
                        )
                    )
            one_in_flight: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in arms}
            for _ in range(rounds):  # alternating too: one window per arm is too noisy
                for name, proc in arms:
                    one_in_flight[name].append(
                        load(
                            env,
                            proc,
                            meshgate=name in ("meshgate", "meshgate_log_off"),
                            check=name == "check",
                            inflight=1,
                            channels=1,
                            warmup=warmup / 2,
                            duration=duration / 2,
                            core=1,
                        )
                    )
            unloaded = {
                name: {"p50_us": median_of(runs, "p50_us")} for name, runs in one_in_flight.items()
            }
            for name, runs in loaded.items():
                errors = [r["errors"] for r in runs if r["errors"]]
                if errors:
                    raise RuntimeError(f"{name} answered with errors under load: {errors}")
            summary = {
                name: {
                    # the maximum is the longest of every round; the rest, medians
                    key: max(float(r[key]) for r in loaded[name])
                    if key == "max_us"
                    else median_of(loaded[name], key)
                    for key in SUMMARY_KEYS
                }
                for name in loaded
            }
            for arm, ratio in (("meshgate", "ratio"), ("meshgate_log_off", "ratio_log_off")):
                summary[ratio] = {
                    key: summary[arm][key] / summary["bare"][key] for key in summary["bare"]
                }
            summary["ratio_check"] = {
                key: summary["check"][key] / summary["bare"][key] for key in summary["bare"]
            }
            summary["check_vs_direct"] = {
                key: summary["check"][key] / summary["meshgate"][key] for key in summary["bare"]
            }
            results["loaded"] = {
                "inflight": args.inflight,
                "channels": args.channels,
                "access_log_bytes": access_log.stat().st_size if access_log.exists() else 0,
                "rounds": loaded,
                "median": summary,
                "gc": {name: gc_pauses(runs) for name, runs in loaded.items()},
            }
            results["unloaded"] = {
                "bare_p50_us": unloaded["bare"]["p50_us"],
                "meshgate_p50_us": unloaded["meshgate"]["p50_us"],
                "meshgate_log_off_p50_us": unloaded["meshgate_log_off"]["p50_us"],
                "overhead_p50_us": unloaded["meshgate"]["p50_us"] - unloaded["bare"]["p50_us"],
                "overhead_log_off_p50_us": unloaded["meshgate_log_off"]["p50_us"]
                - unloaded["bare"]["p50_us"],
                "check_p50_us": unloaded["check"]["p50_us"],
                "rounds": one_in_flight,
            }
            results["in_place"] = in_place(env, args, servers, workdir, warmup, duration)
            if args.only == "chain":
                return results
            bare.stop()
            quiet.stop()
            second = start_meshgate(env, core=None, MESHGATE_LOG_LEVEL="WARNING")
            results["cold"] = cold_and_revocation(
                env, mesh, second, 3 if smoke else args.revocations
            )
            mesh.stop()
            second.stop()
            results["workers"] = workers_comparison(env, args, access_log, warmup, duration)
            hooks = start_meshgate(
                env,
                core=None,
                MESHGATE_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
                MESHGATE_WEBHOOK_SECRET_KEY=base64.b64encode(os.urandom(32)).decode(),
            )
            results["webhooks"] = webhook_delivery(env, hooks, 3 if smoke else args.deliveries)
            with client_channel(env, hooks.target) as channel:
                results["backup"] = backup_restore.backup_restore(
                    channel, env.admin, items=200 if smoke else args.backup_items
                )
            hooks.stop()
            if args.documents:
                results["load"] = load_documents.load_documents(
                    documents=500 if smoke else args.documents,
                    probes=5 if smoke else 20,
                    edge=2 if smoke else 10,
                )
            return results
        finally:
            if env is not None:
                for proc in env.procs:
                    proc.stop()
            mongo.close()
            redis.stop()


def table(results: dict[str, Any]) -> str:
    smoke = " (SMOKE: numbers mean nothing)" if results["smoke"] else ""
    lines = [
        f"meshgate bench, {results['date']}, {results['machine']}",
        f"Python {results['python']}, grpcio {results['grpcio']},"
        f" pinned={results['pinned']}{smoke}",
        "",
    ]
    if "loaded" not in results:  # --only in-place
        return "\n".join(lines + in_place_table(results["in_place"]))
    m, u = results["loaded"], results["unloaded"]
    med = m["median"]
    lines += [
        f"loaded: {m['inflight']} in flight over {m['channels']} channels,"
        f" median of {len(m['rounds']['bare'])} rounds; meshgate = default configuration"
        f" (access log at INFO to a file, {m['access_log_bytes'] / 1e6:.1f} MB written;"
        " metrics on; tracing off)",
        f"{'':22}{'bare mTLS':>11}{'meshgate':>10}{'ratio':>8}{'log off':>10}{'ratio':>8}",
    ]
    for key, label in (
        ("rps", "requests/s"),
        ("p50_us", "p50 latency us"),
        ("p99_us", "p99 latency us"),
        ("p999_us", "p99.9 latency us"),
        ("max_us", "max latency us (all)"),
        ("cpu_us_per_request", "server CPU us/req"),
    ):
        bare, mesh, quiet = (med[arm][key] for arm in ("bare", "meshgate", "meshgate_log_off"))
        lines.append(
            f"{label:22}{bare:>11.0f}{mesh:>10.0f}{med['ratio'][key]:>8.2f}"
            f"{quiet:>10.0f}{med['ratio_log_off'][key]:>8.2f}"
        )
    for arm, label in (("bare", "bare"), ("meshgate", "meshgate"), ("meshgate_log_off", "log off")):
        pauses = m["gc"][arm]
        lines.append(
            f"GC pauses in the windows, {label}: "
            + inplace.gc_line({"gc": pauses["gc"]}, pauses["calls"])
        )
    lines.append(
        "max latency / p99 at 32 in flight: "
        + ", ".join(
            f"{label} {med[arm]['max_us'] / max(1.0, med[arm]['p99_us']):.2f}"
            for arm, label in (
                ("bare", "bare"),
                ("meshgate", "meshgate"),
                ("meshgate_log_off", "log off"),
            )
        )
    )
    check, direct = med["check"], med["meshgate"]
    lines += [
        "",
        "ext_authz Check (same server; a route with GetNamespace's policy) vs the direct call:",
        f"{'':22}{'direct':>11}{'Check':>10}{'Check/bare':>12}{'Check/direct':>14}",
    ]
    for key, label in (
        ("rps", "requests/s"),
        ("p50_us", "p50 latency us"),
        ("cpu_us_per_request", "server CPU us/req"),
    ):
        lines.append(
            f"{label:22}{direct[key]:>11.0f}{check[key]:>10.0f}"
            f"{med['ratio_check'][key]:>12.2f}{med['check_vs_direct'][key]:>14.2f}"
        )
    lines += [
        "",
        f"unloaded (1 in flight), median of {len(u['rounds']['bare'])} rounds:"
        f" p50 bare {u['bare_p50_us']:.0f} us,"
        f" meshgate {u['meshgate_p50_us']:.0f} us (overhead {u['overhead_p50_us']:.0f} us),"
        f" log off {u['meshgate_log_off_p50_us']:.0f} us"
        f" (overhead {u['overhead_log_off_p50_us']:.0f} us),"
        f" Check {u['check_p50_us']:.0f} us",
        "",
        *in_place_table(results["in_place"]),
    ]
    if "cold" not in results:  # --only chain
        return "\n".join(lines)
    c, w, h = (results[k] for k in ("cold", "workers", "webhooks"))
    lines += [
        "",
        f"first call with an uncached key: p50 {c['cold_first_call_p50_us']:.0f} us"
        f" (warm {c['warm_call_p50_us']:.0f} us)",
        f"revocation propagation to a second replica: p50 {c['revocation_p50_ms']:.1f} ms,"
        f" p99 {c['revocation_p99_ms']:.1f} ms ({c['revocation_samples']:.0f} revocations)",
        f"workers at {w['rate']:.0f} calls/s offered (open loop): 1 ->"
        f" {w['open_1']['cpu_us_per_request']:.0f} us CPU/req (p50 {w['open_1']['p50_us']:.0f} us);"
        f" 2 -> {w['open_2']['cpu_us_per_request']:.0f} us CPU/req"
        f" (p50 {w['open_2']['p50_us']:.0f} us); 2/1 = {w['open_cpu_ratio']:.2f}",
        f"  idle (background jobs): 1 worker {w['idle_cpu_ms_per_s_1']:.0f} ms CPU/s,"
        f" 2 workers {w['idle_cpu_ms_per_s_2']:.0f} ms CPU/s; CPU/req less idle:"
        f" 1 -> {w['open_1']['cpu_us_per_request_less_idle']:.0f} us,"
        f" 2 -> {w['open_2']['cpu_us_per_request_less_idle']:.0f} us",
        f"workers, closed loop: 1 -> {w['1']['rps']:.0f} req/s"
        f" at {w['1']['cpu_us_per_request']:.0f} us CPU/req;"
        f" 2 -> {w['2']['rps']:.0f} req/s at {w['2']['cpu_us_per_request']:.0f} us CPU/req"
        f" ({w['throughput_ratio']['rps']:.2f}x)",
        f"webhook delivery submit -> delivered over {h['deliveries']:.0f} tasks:"
        f" p50 {h['p50_ms']:.1f} ms, p95 {h['p95_ms']:.1f} ms, max {h['max_ms']:.1f} ms",
    ]
    lines += backup_restore.table(results["backup"])
    if "load" in results:
        lines += ["", *load_documents.table(results["load"])]
    return "\n".join(lines)


def in_place_table(part: dict[str, Any]) -> list[str]:
    lines = inplace.table(part["arms"], rate=part["rate"], perf=part["perf"])
    for name, arm in part["arms"].items():
        if "profile" in arm:
            lines += ["", *inplace.profile_table(name, **arm["profile"])]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="seconds, not minutes: checks the harness only"
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument(
        "--rate", type=float, default=500.0, help="the workers' open-loop offered calls/s"
    )
    parser.add_argument(
        "--in-place-rate",
        type=float,
        default=500.0,
        help="the fixed-rate part's offered calls/s (CPU by library, loop work, GC; default"
        " 500, below what the default configuration answers on a busy 2-core machine)",
    )
    parser.add_argument(
        "--only",
        choices=("chain", "in-place"),
        help="chain: the loaded and unloaded rows and the fixed-rate part (a few minutes);"
        " in-place: the fixed-rate part alone (about a minute)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="the fixed-rate part adds a window per meshgate server under cProfile: the"
        " statistics go to this directory and the largest items are printed",
    )
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument(
        "--backup-items",
        type=int,
        default=10_000,
        help="documents, and as many points, in the exported and imported namespace",
    )
    parser.add_argument(
        "--deliveries", type=int, default=50, help="tasks whose webhook delivery is timed"
    )
    parser.add_argument(
        "--documents",
        type=int,
        default=100_000,
        help="the load figure's document count (default 100000, 500 with --smoke; 0 skips it)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    args = parser.parse_args()
    results = run_bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)  # build/ in a fresh checkout
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
