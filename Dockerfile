# meshgate's container image: `meshgate serve` on python:3.13-slim, as a non-root user,
# on a read-only root filesystem. No embedded engines, no development tools: the stores
# come from MESHGATE_MONGODB_URI, MESHGATE_REDIS_URL and MESHGATE_QDRANT_URL
# (docs/deploy.md). Linted with hadolint by `make lint` and the tests.

# --- build: generate the stubs from the protos, install meshgate into a venv ---------
FROM python:3.13-slim AS build

WORKDIR /src
RUN python -m venv /opt/meshgate \
    && pip install --no-cache-dir "grpcio-tools==1.85.*"

COPY protos/ protos/
RUN mkdir -p gen \
    && python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
        protos/meshgate/v1/*.proto \
    && touch gen/meshgate/__init__.py gen/meshgate/v1/__init__.py gen/meshgate/py.typed

COPY pyproject.toml LICENSE ./
COPY server/ server/
COPY services/ services/
COPY interceptors/ interceptors/
COPY calls/ calls/
COPY storage/ storage/
# the commit the image is built from (`--build-arg REVISION=$(git rev-parse --short=12 HEAD)`):
# `meshgate --version` and the meshgate_build_info gauge report it (server/version.py)
ARG REVISION=unknown
RUN printf '%s\n' "${REVISION}" > server/REVISION \
    && /opt/meshgate/bin/pip install --no-cache-dir . \
    && /opt/meshgate/bin/pip install --no-cache-dir --no-deps --force-reinstall \
        "opentelemetry-proto==$(/opt/meshgate/bin/python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')" \
    && /opt/meshgate/bin/python -m compileall -q /opt/meshgate/lib

# --- runtime: the venv only ------------------------------------------------------------
FROM python:3.13-slim

RUN useradd --system --no-log-init --uid 10001 --user-group --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin meshgate

COPY --from=build /opt/meshgate /opt/meshgate

# Certificates and secrets are mounted files (Kubernetes secrets); the data directory is
# only for the embedded engines, which this image does not have: /tmp keeps it writable.
ENV PATH=/opt/meshgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MESHGATE_LISTEN=0.0.0.0:50051 \
    MESHGATE_METRICS_LISTEN=0.0.0.0:9464 \
    MESHGATE_TLS_CERT=/etc/meshgate/tls/tls.crt \
    MESHGATE_TLS_KEY=/etc/meshgate/tls/tls.key \
    MESHGATE_TLS_CLIENT_CA=/etc/meshgate/tls/ca.crt \
    MESHGATE_DATA_DIR=/tmp/meshgate

USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464

# liveness over plain HTTP on the metrics listener (the gRPC port demands a client certificate)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]

ENTRYPOINT ["meshgate"]
CMD ["serve"]
