# dCMMS telemetry pipeline. Quick start: `make run`, then `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt when setup.py changes (its hash names the stamp file).
STAMP := $(VENV)/.installed-$(shell sha1sum setup.py | cut -c1-12)

.PHONY: install venv system-deps jars web-assets run run-cluster stop status logs test test-unit test-integration lint clean chaos \
	bench bench-quick bench-deps

install: $(STAMP) system-deps jars web-assets

$(STAMP): setup.py
	@echo ">> creating Python venv in $(VENV) with $(PYTHON)"
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@echo ">> installing pinned dependencies (first time: a few minutes)"
	@$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

jars:
	@bash scripts/fetch-jars.sh

# The operator console's chart library (uPlot, pinned) from the npm registry.
web-assets:
	@bash scripts/fetch-web-assets.sh

# Installs what is missing, starts every service and the pipeline, waits until
# healthy and prints the endpoints. A failed start stops what it started.
run: install
	@$(BIN)/dcmms-telemetry up --with-pipeline

# The same stack on the cluster topology: a Flink session cluster (JobManager + 2 TaskManagers)
# and 3 Kafka brokers (runners/stack/cluster.py, docs/scaling.md); `make stop` stops it too.
run-cluster: install
	@$(BIN)/dcmms-telemetry up --profile cluster --with-pipeline

stop:
	@test -x $(BIN)/dcmms-telemetry && $(BIN)/dcmms-telemetry down || echo "nothing to stop (no venv)"

status: $(STAMP)
	@$(BIN)/dcmms-telemetry status

# `make logs` follows every log; `make logs SERVICE=kafka` one service.
logs: $(STAMP)
	@$(BIN)/dcmms-telemetry logs $(SERVICE)

lint: $(STAMP)
	@$(BIN)/ruff check .

test-unit: $(STAMP)
	@$(BIN)/pytest tests/unit -q

# Runs every test on a stack of its own (the test profile: .run-test, ports 2xxxx;
# see docs/local-stack.md), started unless already up and stopped again if started
# here; the stack of `make run` is never touched and may keep running.
test: install
	@bash scripts/run-tests.sh

# Benchmarks (never part of `make test`): against the local stack, started if
# it is down; results in bench/results/, see docs/benchmarks.md.
bench-deps: install
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[bench]'

bench: bench-deps
	@$(BIN)/python -m bench --mode full $(BENCH_ARGS)

bench-quick: bench-deps
	@$(BIN)/python -m bench --mode quick

clean: stop
	rm -rf .run

# Crash, back-pressure and bad-input drills on a second stack of its own (the chaos
# profile: .run-chaos, ports 1xxxx; see docs/reliability.md). Never part of `make test`.
# Ends with the results table; fails if anything was lost, doubled or crashed.
# Options: make chaos CHAOS_ARGS="--scenarios bridge-sigkill --bad-cases 1000"
chaos: install
	@$(BIN)/python -m chaos $(CHAOS_ARGS)
