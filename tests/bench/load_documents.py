"""The load figure: N documents into one namespace through the API, on embedded backends.

`meshgate serve --dev` as `make run` starts it (no MESHGATE_MONGODB_URI,
MESHGATE_REDIS_URL or MESHGATE_QDRANT_URL: every store embedded, data on disk
under a temporary MESHGATE_DATA_DIR), after `meshgate bootstrap` made an
enterprise organization so rate limits stay out of the figure. One client,
one call in flight:

- single calls into the empty namespace: CreateDocument, GetDocument and the
  first ListDocuments page (median of `probes` calls each);
- the load: BatchCreateDocuments of `batch` documents until the namespace
  holds N; the time of every batch is kept, and the per-document cost of the
  first and the last `edge` batches (median) is reported;
- the same single calls again, now with N documents in the namespace.

The figures that matter are ratios measured in the same run (end / start),
since the machine is noisy.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from meshgate.v1 import (
    common_pb2,
    document_service_pb2,
    document_service_pb2_grpc,
    namespace_service_pb2,
    namespace_service_pb2_grpc,
)

from certs.dev_pki import issue_pki
from tests.support.processes import free_port

__all__ = ["load_documents"]

ROOT = Path(__file__).resolve().parents[2]
LIST_DOCUMENTS = "/meshgate.v1.DocumentService/ListDocuments"


def _struct(value: dict[str, Any]) -> Struct:
    out = Struct()
    out.update(value)
    return out


def _document(index: int) -> document_service_pb2.CreateDocumentRequest:
    return document_service_pb2.CreateDocumentRequest(
        document=document_service_pb2.Document(
            document_id=f"load-{index:08d}",
            body=_struct({"title": f"document {index}", "text": "lorem ipsum " * 8, "n": index}),
            metadata=_struct({"kind": "abc"[index % 3], "n": index, "even": index % 2 == 0}),
        )
    )


def _embedded_env(data_dir: Path, certs: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    env.update(
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        MESHGATE_LISTEN=f"127.0.0.1:{port}",
        MESHGATE_TLS_CERT=str(certs / "server.pem"),
        MESHGATE_TLS_KEY=str(certs / "server-key.pem"),
        MESHGATE_TLS_CLIENT_CA=str(certs / "ca.pem"),
        MESHGATE_DATA_DIR=str(data_dir),
        MESHGATE_LOG_LEVEL="WARNING",
        MESHGATE_METRICS_LISTEN="127.0.0.1:0",
    )
    return env


def _median_ms(call: Callable[[], object], count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_documents(
    *, documents: int, batch: int = 100, probes: int = 20, edge: int = 10, core: int | None = None
) -> dict[str, Any]:
    """Run the load against a fresh `meshgate serve --dev`; returns the figures (JSON-ready)."""
    pin = ["taskset", "-c", str(core)] if core is not None else []
    with tempfile.TemporaryDirectory(prefix="meshgate-load-") as tmp:
        work = Path(tmp)
        certs, data_dir = work / "certs", work / "var"
        issue_pki(certs)
        port = free_port()
        env = _embedded_env(data_dir, certs, port)
        key_file = data_dir / "dev-admin-key"
        data_dir.mkdir()
        subprocess.run(
            [
                *(sys.executable, "-m", "server.cli", "bootstrap", "--dev", "--name", "load"),
                *("--plan", "enterprise", "--environment", "development"),
                *("--key-file", str(key_file)),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        server = subprocess.Popen(
            [*pin, sys.executable, "-m", "server.cli", "serve", "--dev"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            return _run(
                server=server,
                target=f"localhost:{port}",
                certs=certs,
                secret=key_file.read_text().strip(),
                documents=documents,
                batch=batch,
                probes=probes,
                edge=edge,
            )
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_ready(channel: grpc.Channel, server: subprocess.Popen[bytes], secret: str) -> None:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(LIST_DOCUMENTS)
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"meshgate serve --dev exited with {server.returncode}")
        try:
            call(b"", metadata=(("authorization", f"Bearer {secret}"),), timeout=1)
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:  # answering, if only to refuse
                return
            if time.monotonic() > deadline:
                raise RuntimeError("meshgate serve --dev never became ready") from None
            time.sleep(0.1)


def _run(
    *,
    server: subprocess.Popen[bytes],
    target: str,
    certs: Path,
    secret: str,
    documents: int,
    batch: int,
    probes: int,
    edge: int,
) -> dict[str, Any]:
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / "client-key.pem").read_bytes(),
        (certs / "client.pem").read_bytes(),
    )
    with grpc.secure_channel(target, credentials) as channel:
        _wait_ready(channel, server, secret)
        admin = (("authorization", f"Bearer {secret}"),)
        namespace = (
            namespace_service_pb2_grpc.NamespaceServiceStub(channel)
            .CreateNamespace(
                namespace_service_pb2.CreateNamespaceRequest(
                    name="load", environment=common_pb2.ENVIRONMENT_DEVELOPMENT
                ),
                metadata=admin,
            )
            .namespace
        )
        md = (*admin, ("x-namespace", namespace.namespace_id))
        stub = document_service_pb2_grpc.DocumentServiceStub(channel)
        singles = iter(range(10**9, 2 * 10**9))  # single-call ids, apart from the load's

        def probe() -> dict[str, float]:
            created: list[str] = []

            def create() -> None:
                request = _document(next(singles))
                created.append(stub.CreateDocument(request, metadata=md).document.document_id)

            create_ms = _median_ms(create, probes)
            ids = iter(created * 2)
            get_ms = _median_ms(
                lambda: stub.GetDocument(
                    document_service_pb2.GetDocumentRequest(document_id=next(ids)), metadata=md
                ),
                probes,
            )
            list_ms = _median_ms(
                lambda: stub.ListDocuments(
                    document_service_pb2.ListDocumentsRequest(page_size=50), metadata=md
                ),
                max(3, probes // 4),
            )
            return {"create_ms": create_ms, "get_ms": get_ms, "list_first_page_ms": list_ms}

        start = probe()
        batch_s: list[float] = []
        cpu_before = _cpu_seconds(server.pid)
        loaded_at = time.perf_counter()
        for first in range(0, documents, batch):
            request = document_service_pb2.BatchCreateDocumentsRequest(
                requests=[_document(i) for i in range(first, min(first + batch, documents))]
            )
            started = time.perf_counter()
            stub.BatchCreateDocuments(request, metadata=md, timeout=120)
            batch_s.append(time.perf_counter() - started)
        load_s = time.perf_counter() - loaded_at
        cpu_s = _cpu_seconds(server.pid) - cpu_before
        end = probe()
    edge = max(1, min(edge, len(batch_s) // 2))
    first_ms = statistics.median(batch_s[:edge]) * 1e3 / batch
    last_ms = statistics.median(batch_s[-edge:]) * 1e3 / batch
    return {
        "documents": documents,
        "batch": batch,
        "load_s": load_s,
        "documents_per_s": documents / load_s,
        "server_cpu_ms_per_document": cpu_s * 1e3 / documents,
        "batch_s": batch_s,
        "per_document_first_batches_ms": first_ms,
        "per_document_last_batches_ms": last_ms,
        "per_document_ratio": last_ms / first_ms,
        "start": start,
        "end": end,
        "ratio": {key: end[key] / start[key] for key in start},
    }


def table(load: dict[str, Any]) -> list[str]:
    """The load section of the bench table."""
    start, end, ratio = load["start"], load["end"], load["ratio"]
    return [
        f"load: {load['documents']} documents into one namespace, BatchCreateDocuments of"
        f" {load['batch']}, embedded backends (serve --dev)",
        f"  {load['load_s']:.1f} s ({load['documents_per_s']:.0f} documents/s,"
        f" server CPU {load['server_cpu_ms_per_document']:.2f} ms/document)",
        f"  per document in a batch: first batches {load['per_document_first_batches_ms']:.2f} ms,"
        f" last {load['per_document_last_batches_ms']:.2f} ms"
        f" ({load['per_document_ratio']:.2f}x)",
        f"{'':24}{'empty':>10}{'at N':>10}{'ratio':>8}",
        *(
            f"  {label:22}{start[key]:>10.2f}{end[key]:>10.2f}{ratio[key]:>8.2f}"
            for key, label in (
                ("create_ms", "CreateDocument ms"),
                ("get_ms", "GetDocument ms"),
                ("list_first_page_ms", "ListDocuments(50) ms"),
            )
        ),
    ]
