# rankstream: the two commands are `make demo` and `make test`; both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STATE := .rankstream/test
TEST_PORT ?= 19092
PYTEST_ARGS ?=

.PHONY: setup kafka-jars demo test lint format bench stack-up stack-down stack-status clean

setup: $(STAMP) ## create .venv and install rankstream with all extras

$(STAMP): pyproject.toml
	@test -f $(BIN)/python || $(PYTHON) infra/preflight_disk.py .
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	@touch $(STAMP)

kafka-jars: setup ## fetch the Kafka broker jars from Maven Central (cached)
	@$(BIN)/python -c "from rankstream.dev.stack import ensure_jars; print('kafka jars:', ensure_jars())"

demo: kafka-jars ## the main job: real Kafka + stream worker + sink + a 4-rank torch job with faults
	$(BIN)/rankstream demo $(DEMO_ARGS)

test: kafka-jars ## start the test broker, run the whole suite, stop what it started (also on failure)
	@bash infra/run-tests.sh $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check) and mypy (infra/typecheck.sh)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@bash infra/typecheck.sh

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: kafka-jars ## run every benchmark; each prints one JSON line
	@bash infra/run-benchmarks.sh

stack-up: kafka-jars
	$(BIN)/rankstream stack up

stack-down: setup
	$(BIN)/rankstream stack down

stack-status: setup
	$(BIN)/rankstream stack status

clean: stack-down
	rm -rf .rankstream
