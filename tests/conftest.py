"""Shared fixtures: a service on the committed default models, with its own log and state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from risk_service import create_app

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"

AppFactory = Callable[..., Flask]


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
        app.extensions["risk"].log.close()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
