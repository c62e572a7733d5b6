"""Shared fixtures: a service on the committed default models, with its own log and state."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from risk_service import create_app

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"

AppFactory = Callable[..., Flask]

# Modules whose tests are CPU-bound and deterministic: no wall-clock bound, no server or
# store timeout of a few ms, nothing that another process's load could make late. `make test`
# runs them one module a process on every core (pytest-xdist, `-m parallel`) at the lowest
# priority, beside the rest one at a time at normal priority (tests/run_suite.py): the worker,
# degradation and load tests get a core whenever they want one.
PARALLEL_MODULES = frozenset(
    {
        "test_backtest",
        "test_bundles",
        "test_credit",
        "test_credit_model",
        "test_evaluate",
        "test_features_aggregates",
        "test_features_leakage",
        "test_features_parity",
        "test_features_spec",
        "test_features_world",
        "test_forest",
        "test_from_log",
        "test_http_response",
        "test_policy",
        "test_properties",
        "test_reasons",
        "test_requests",
        "test_scorecard",
        "test_scores_costs",
        "test_service_parity",
        "test_simulate",
        "test_simulate_scenarios",
        "test_state_expiry",
        "test_train",
        "test_treeshap",
    }
)


# The longest parallel modules (seconds on one core), started first: pytest-xdist hands a
# process the next module when the one it runs is nearly done, so the longest last would run
# alone at the end (`make test` keeps this order: --no-loadscope-reorder).
LONGEST_FIRST = ("test_train", "test_backtest", "test_service_parity", "test_from_log")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in PARALLEL_MODULES:
            item.add_marker(pytest.mark.parallel)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: else unchanged


def wait_for(
    condition: Callable[[], bool], what: str, seconds: float = 15.0, *, looks: int = 1
) -> None:
    """Until ``condition`` holds ``looks`` times in a row (looked at every 20 ms)."""
    deadline = time.monotonic() + seconds
    streak = 0
    while True:
        streak = streak + 1 if condition() else 0
        if streak >= looks:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    """Build apps on the committed models, each with a fresh decision log and state."""
    apps: list[Flask] = []

    def build(**config: Any) -> Flask:
        settings = {
            "MODELS_DIR": str(MODELS),
            "DECISION_LOG_PATH": str(tmp_path / f"log{len(apps)}.sqlite"),
            "DECISION_LOG_SYNC": "NORMAL",
            "HASH_KEY": "test-key-" + "x" * 32,
            "GC_TUNING": False,
            **config,
        }
        app = create_app(settings)
        app.testing = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["risk_watcher"].stop()
        snapshots = app.extensions.get("risk_snapshots")
        if snapshots is not None:
            snapshots.stop()
        app.extensions["risk"].close()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# -- the machine's real PostgreSQL and Redis (integration tests) -----------------------------
# Integration tests FAIL (never skip) when a service is missing: CI must not pass without them.
PG_URL = os.environ.get("RISK_TEST_PG_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RISK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema on the machine's PostgreSQL, dropped after."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_URL} (RISK_TEST_PG_URL): {exc}")
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{PG_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@dataclass(frozen=True)
class RedisTarget:
    """The machine's Redis and a key prefix of this test's own (its keys are deleted after)."""

    url: str
    prefix: str


@pytest.fixture
def redis_target() -> Iterator[RedisTarget]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} (RISK_TEST_REDIS_URL): {exc}")
    target = RedisTarget(REDIS_URL, f"test-{uuid.uuid4().hex[:12]}:")
    try:
        yield target
    finally:
        keys = list(client.scan_iter(match=target.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def state_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Service settings for each online state store: in memory, and the machine's Redis.

    The Redis timeout is generous here: tests check answers, not latency, on a busy CI box.
    """
    if request.param == "memory":
        return {}
    target: RedisTarget = request.getfixturevalue("redis_target")
    return {"STATE_URL": target.url, "STATE_PREFIX": target.prefix, "STATE_TIMEOUT_MS": 2000.0}
