# harmony-agent: `make demo` runs the agent against a local nats-server; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= /tmp/harmony-demo

.PHONY: all deps venv demo demo-stop bench-agent bench-logs bench-upgrade test lint typecheck schemas example clean

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
	bash scripts/demo.sh

demo-stop:
	-for p in $(DEMO_DIR)/agent.pid $(DEMO_DIR)/nats-server.pid $(DEMO_DIR)/journald.pid; do \
	  [ -f $$p ] && kill $$(cat $$p) 2>/dev/null; rm -f $$p; done

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

example: venv
	$(BIN)/python -m agent.config_doc > agent.example.toml

bench-agent: deps venv
	$(BIN)/python -m bench.agent

bench-logs: deps venv
	$(BIN)/python -m bench.logs --runs 5

bench-upgrade: deps venv
	$(BIN)/python -m bench.upgrade --runs 3 --window 5s

clean:
	rm -rf $(VENV) build dist *.egg-info

-include packaging/deb/deb.mk
