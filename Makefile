# harmony-agent: `make demo` runs the agent against a local nats-server; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make demo` keeps everything under DEMO_DIR; its nats-server listens on NATS_PORT.
DEMO_DIR ?= /tmp/harmony-demo
NATS_PORT ?= 4222
DEMO_ENV = DEMO_DIR='$(DEMO_DIR)' NATS_PORT='$(NATS_PORT)'

.PHONY: all deps venv demo demo-stop demo-clean bench-agent bench-logs bench-upgrade bench-auth bench-fleet test lint typecheck schemas example clean

all: test

deps:
	bash .ci/deps.sh

venv: $(BIN)/harmony-agent

$(BIN)/harmony-agent: pyproject.toml
	$(PY) -m venv --clear $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: deps venv
	$(DEMO_ENV) bash scripts/demo.sh start

# The agent first (so it records Stopped), then nats-server; only processes the demo started.
demo-stop:
	$(DEMO_ENV) bash scripts/demo.sh stop

# demo-stop, then remove DEMO_DIR: the store (old devices), state and logs.
demo-clean:
	$(DEMO_ENV) bash scripts/demo.sh clean

lint: venv
	$(BIN)/ruff check agent harmony_core harmony_fleet tests bench
	$(BIN)/ruff format --check agent harmony_core harmony_fleet tests bench || true

typecheck: venv
	$(BIN)/mypy

test: deps venv
	$(BIN)/ruff check agent harmony_core harmony_fleet tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

schemas: venv
	$(BIN)/python -m harmony_core.contracts contracts
	$(BIN)/python -m harmony_core.permissions contracts

example: venv
	$(BIN)/python -m agent.config_doc > agent.example.toml
	$(BIN)/python -m agent.config_doc --contract docs/contract.md

bench-agent: deps venv
	$(BIN)/python -m bench.agent

bench-logs: deps venv
	$(BIN)/python -m bench.logs --runs 5

bench-upgrade: deps venv
	$(BIN)/python -m bench.upgrade --runs 3 --window 5s

# N simulated devices against one nats-server; CLUSTER=1: a 3-node cluster, R3 (docs/cluster.md).
N ?= 10000
bench-fleet: deps venv
	$(BIN)/python -m bench.fleet --devices $(N) $(if $(CLUSTER),--cluster)

bench-auth: deps venv
	$(BIN)/python -m bench.auth

clean:
	rm -rf $(VENV) build dist *.egg-info

-include packaging/deb/deb.mk
