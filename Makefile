# Steward — the two commands that matter: `make run` (whole stack, embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9
BUF_VERSION := 1.75.0
PROTO_FILES := $(shell find protos -name '*.proto')

.PHONY: run test soak lint lock deploy-check protos protos-check buf bench install clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## run: the whole stack on embedded defaults (NATS, OpenBao, SQLite, dev CA and IdP, an SMTP sink, a WhatsApp Graph API stand-in, every service)
run: $(STAMP)
	$(BIN)/steward run

## test: the full suite (unit + integration against real NATS, OpenBao, SQLite, PostgreSQL)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## soak: the full system campaign (tests/system) on SQLite and PostgreSQL — every fault under load, accounting,
## soak, fuzz — one report on stdout and in bench/results/soak-<time>.txt. Sizes: SOAK_* variables (tests/system/harness/campaign.py).
soak: $(STAMP)
	SOAK=1 $(BIN)/python -m tests.system.soak

lint: $(STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy

## lock: regenerate requirements.lock (dev + devstack extras) and, from it, requirements-runtime.lock (the image's)
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra devstack --generate-hashes -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --generate-hashes -c requirements.lock -o requirements-runtime.lock

## deploy-check: the image and the manifests without a cluster or container daemon: hadolint, yamllint, schema
## validation (kubernetes-validate --strict + vendored CRDs), checkov, kubectl kustomize, the image's install steps
## run as UID 10001. CI=true makes a missing tool (kubectl) fail instead of skip.
deploy-check: $(STAMP)
	$(BIN)/hadolint --failure-threshold style Dockerfile
	$(BIN)/yamllint --strict .
	CI=$${CI:-true} $(BIN)/python -m pytest -q tests/unit/deploy tests/integration/deploy $(PYTEST_ARGS)

## protos: regenerate Python code and .pyi stubs into gen/ (committed)
protos: $(STAMP)
	rm -rf gen/steward
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
		--mypy_out=gen --mypy_grpc_out=gen $(PROTO_FILES)
	find gen/steward -type d -exec touch {}/__init__.py \;

## protos-check: fail when the committed generated code is stale
protos-check: protos
	git diff --exit-code --stat -- gen/ && test -z "$$(git status --porcelain -- gen/)"

## buf: lint the contracts (buf ships on npm as @bufbuild/buf)
buf:
	test -x .tools/node_modules/.bin/buf || npm install -s --prefix .tools "@bufbuild/buf@$(BUF_VERSION)"
	cd protos && ../.tools/node_modules/.bin/buf lint

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .steward .pytest_cache
