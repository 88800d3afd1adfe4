"""The installed environment is the one the distributions recorded: xds-protos ships an
older copy of opentelemetry/proto/ (no InstrumentationScope), and whichever of the two pip
installs last wins; `make setup`, `make run` and the image reinstall opentelemetry-proto
last (Makefile, Dockerfile), so that the OTLP exporter loads (a fresh clone's `make test`
failed on it: pip had installed xds-protos last)."""

from __future__ import annotations

import base64
import hashlib
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

from server.tracing import TracingError, _exporter


def test_opentelemetry_protos_are_opentelemetry_protos() -> None:
    dist = distribution("opentelemetry-proto")
    changed = []
    for file in dist.files or ():
        if file.hash is None or not file.name.endswith(".py"):
            continue
        digest = hashlib.new(file.hash.mode, Path(file.locate()).read_bytes()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != file.hash.value:
            changed.append(str(file))
    assert changed == [], f"replaced by another distribution: {changed[:5]}"


def test_the_otlp_exporter_loads_or_says_how_to_repair_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert type(_exporter("otlp", {})).__name__ == "OTLPSpanExporter"
    # the import as it fails on an install whose opentelemetry-proto files were replaced
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(TracingError, match="force-reinstall --no-deps opentelemetry-proto"):
        _exporter("otlp", {})
