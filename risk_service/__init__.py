"""risk_service: the online half of the risk engine.

`create_app` is the Flask application factory; everything it needs online
(features, bundles, scoring, policy, stores) lives in this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: defaults, RISK_* environment, then `test_config`; routes and errors."""
    from flask import Flask

    from risk_service import api, api_admin, logs, routing, service, web
    from risk_service.config import DEFAULTS

    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("RISK")
    if test_config is not None:
        app.config.from_mapping(test_config)
    # Refuse oversized bodies before they are read; the API parser checks again.
    # One byte over the limit so that a chunked body (no Content-Length), which werkzeug cuts
    # there, still reads as over the limit (413) rather than as truncated JSON.
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_BODY_BYTES"]) + 1
    logs.configure(app)  # first: what the start-up says (state restored, decisions recalled)
    front = bool(app.config.get("SCORING_FRONT"))
    if front:  # the worker before a scoring process: it installs the scorer's client
        app.extensions["risk"] = None  # (`risk_service/scoring_process.py`)
    else:
        scorer, watcher = service.build_scorer(app.config)
        app.extensions["risk"] = scorer
        app.extensions["risk_watcher"] = watcher
    app.register_blueprint(api.bp)
    app.register_blueprint(api_admin.bp)
    if app.config["BENCH_EMPTY_ENDPOINT"]:
        app.add_url_rule("/_empty", "empty", api.empty, methods=["GET", "POST"])
    api.register_errors(app)
    web.init_app(app)  # keys and scopes, request ids, JSON logs, /metrics
    routing.install(app)  # static routes matched without a garbage cycle a request
    if app.config["GC_TUNING"]:
        service.tune_gc()
    if front:
        return app
    watcher.start()
    snapshots = service.periodic_snapshots(scorer, app.config)
    if snapshots is not None:
        app.extensions["risk_snapshots"] = snapshots
        snapshots.start()
    return app
