"""A namespace's Qdrant collection on a distributed Qdrant: shards, replicas, write consistency.

Local mode has one node and ignores a layout, so what is checked is what
qdrant-client sends to a remote Qdrant: its REST requests are received by a
small HTTP endpoint on loopback that answers as Qdrant does and records them.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from qdrant_client import AsyncQdrantClient

from storage.backends.mongo import MongoStore
from storage.backends.scoped import Scope
from storage.core.ids import new_namespace_id
from storage.data.vectors import CollectionLayout, VectorStore, collection_name

# Qdrant's answers to the requests of a collection's creation
_ANSWERS = {
    ("GET", "exists"): {"exists": False},
    ("PUT", "collection"): True,
    ("PUT", "index"): {"operation_id": 1, "status": "completed"},
}


@dataclass
class RecordingQdrant:
    """Answers like Qdrant's REST API for a collection's creation; keeps every request."""

    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> RecordingQdrant:
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.split("?")[0]
                recorded.append((self.command, path, body))
                kind = path.rsplit("/", 1)[-1] if path.count("/") > 2 else "collection"
                payload = json.dumps(
                    {"result": _ANSWERS[(self.command, kind)], "status": "ok", "time": 0.0}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def created(self, name: str) -> dict[str, Any]:
        """The body of the collection's creation request."""
        return next(b for m, p, b in self.requests if m == "PUT" and p == f"/collections/{name}")


@pytest.fixture
def qdrant() -> Iterator[RecordingQdrant]:
    recording = RecordingQdrant().start()
    yield recording
    recording.stop()


@pytest.mark.parametrize(
    "layout",
    [CollectionLayout(shard_number=6, replication_factor=3, write_consistency_factor=2), None],
    ids=["layout", "qdrant-defaults"],
)
async def test_a_namespace_collection_is_created_with_the_layout(
    qdrant: RecordingQdrant, quiet_mongo: MongoStore, layout: CollectionLayout | None
) -> None:
    client = AsyncQdrantClient(url=qdrant.url, prefer_grpc=False, check_compatibility=False)
    store = VectorStore(mongo=quiet_mongo, qdrant=client, payload_index=True, layout=layout)
    scope = Scope(internal_id=str(uuid.uuid4()), namespace_id=new_namespace_id())
    try:
        await store.create(scope, dimension=3, distance="cosine")
    finally:
        await client.close()
    body = qdrant.created(collection_name(scope.namespace_id))
    assert body["vectors"] == {"size": 3, "distance": "Cosine"}
    sent = {
        k: body.get(k) for k in ("shard_number", "replication_factor", "write_consistency_factor")
    }
    if layout is None:
        assert set(sent.values()) == {None}  # Qdrant decides
    else:
        assert sent == {"shard_number": 6, "replication_factor": 3, "write_consistency_factor": 2}
    paths = [p for _, p, _ in qdrant.requests]
    assert paths[-1] == f"/collections/{collection_name(scope.namespace_id)}/index"
