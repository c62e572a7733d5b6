# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test lint format

# the C extension is built by the project's install: a change to its source reinstalls
$(STAMP): pyproject.toml requirements.lock risk_service/features/_rolling.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The scoring service on the committed default models (http://127.0.0.1:8000, docs at /docs).
run: install
	$(BIN)/risk serve --models models

# Simulate the default world and train on it (what produced the committed models).
demo: install
	$(BIN)/risk simulate --out data/default-world
	$(BIN)/risk train --data data/default-world --models var/models --reports var/reports

lint: install
	$(BIN)/ruff check risk_service training tests bench
	$(BIN)/ruff format --check risk_service training tests bench
	$(BIN)/mypy
	$(BIN)/hadolint --failure-threshold info Dockerfile

# The CPU-bound, deterministic modules first, a module a process on every core (up to 4);
# then the rest, whose wall-clock bounds and store timeouts want a core of their own.
test: lint
	$(BIN)/pytest -m parallel -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder
	$(BIN)/pytest -m "not parallel"

format: install
	$(BIN)/ruff check --fix risk_service training tests bench
	$(BIN)/ruff format risk_service training tests bench
