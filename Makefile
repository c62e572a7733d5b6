# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test lint format

# uv installs the same pinned packages as pip, in seconds instead of a minute or more (its
# downloads run side by side). Like pip, it writes the packages' bytecode at install: with
# PYTHONDONTWRITEBYTECODE set, as on CI, every process would compile sklearn, pandas ... from
# source again (3x the service's start-up). The C extension is built by the project's
# install: a change to its source reinstalls.
UV_VERSION := 0.13.9
UV := $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode
$(STAMP): pyproject.toml requirements.lock risk_service/features/_rolling.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) -r requirements.lock
	$(UV) --no-deps -e .
	# The committed models, verified and loaded once: their trees compiled into numba's
	# on-disk cache here, the first `risk serve` (and every test's) starts in seconds, not 20.
	$(BIN)/risk models verify --load --models models
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

# The CPU-bound, deterministic modules a module a process on every core (up to 4) at the
# lowest priority, beside the rest one at a time, whose wall-clock bounds and store timeouts
# get a core whenever they want one (tests/run_suite.py).
test: lint
	$(BIN)/python tests/run_suite.py

format: install
	$(BIN)/ruff check --fix risk_service training tests bench
	$(BIN)/ruff format risk_service training tests bench
