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
.PHONY: help setup protos certs run test test-deps lint stubs bench bench-smoke clean

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

# The editable install maps the generated `meshgate` package, so it runs after `protos`.
$(STAMP): pyproject.toml $(GEN)/.stamp
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

setup: $(STAMP) ## create .venv, generate stubs, install meshgate and its dev tools

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

test-deps: ## make sure a redis-server binary exists (installs Debian's package as root)
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing redis-server from Debian's packages"; \
	    (apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }); \
	  else echo "error: redis-server is needed by the tests; install it (e.g. 'sudo apt-get install redis-server') or set MESHGATE_TEST_REDIS_SERVER=/path/to/redis-server"; exit 1; fi; }

test: setup test-deps ## run the whole test suite (starts its own redis-server, embedded MongoDB engine)
	$(VENV)/bin/pytest -q

lint: setup ## ruff and mypy --strict on the source tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check server services interceptors storage workers tests
	$(VENV)/bin/mypy

stubs: setup ## build dist/meshgate_stubs-*.whl: generated client stubs for other services
	rm -rf build/stubs && mkdir -p build/stubs dist
	cp -r $(GEN)/meshgate build/stubs/ && cp protos/stubs-pyproject.toml build/stubs/pyproject.toml
	cp protos/meshgate/v1/*.proto build/stubs/meshgate/v1/
	find build/stubs -name '__pycache__' -prune -exec rm -rf {} +
	cd build/stubs && ../../$(PY) -m build --no-isolation --wheel --outdir ../../dist . >/dev/null
	@ls dist/meshgate_stubs-*.whl

clean: ## remove generated files, the venv, runtime data and dev certificates
	rm -rf $(VENV) $(GEN) var build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f certs/*.pem
	find . -name __pycache__ -prune -exec rm -rf {} +
