"""HTTP routes: parse the request, call the core, render JSON. Nothing else happens here."""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from risk_service.decision_log import DecisionLogError
from risk_service.errors import ApiError
from risk_service.redis_state import StoreUnavailable
from risk_service.openapi import docs_page, openapi_document
from risk_service.requests import parse_json_body, validate_score_request
from risk_service.scoring import Scorer

bp = Blueprint("risk", __name__)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        mimetype="application/json",
    )


def _scorer() -> Scorer:
    scorer: Scorer = current_app.extensions["risk"]
    return scorer


@bp.post("/score")
def score() -> Response:
    config = current_app.config
    body = parse_json_body(
        request.get_data(cache=False),
        request.content_type,
        int(config["MAX_BODY_BYTES"]),
        int(config["MAX_JSON_DEPTH"]),
    )
    validated = validate_score_request(
        body,
        now_ms=int(time.time() * 1000),
        max_future_ms=int(config["MAX_FUTURE_SECONDS"]) * 1000,
        max_amount=float(config["MAX_AMOUNT"]),
    )
    return _json(_scorer().score(validated))


@bp.get("/health")
def health() -> Response:
    """Alive: the process answers."""
    return _json({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Ready: models loaded and verified, decision log reachable."""
    scorer = _scorer()
    checks = {"fraud_model": scorer.models.fraud is not None}
    try:
        scorer.log.count()
        checks["decision_log"] = True
    except Exception:  # any store failure means not ready; the detail goes to the log
        current_app.logger.exception("decision log not reachable")
        checks["decision_log"] = False
    ok = all(checks.values())
    return _json({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)


@bp.get("/models")
def models() -> Response:
    """The loaded bundles and their manifests."""
    scorer = _scorer()
    loaded = {}
    for kind, model in (("fraud", scorer.models.fraud), ("credit", scorer.models.credit)):
        loaded[kind] = None if model is None else model.bundle.manifest
    return _json({"models": loaded, "policy_version": scorer.policy.version})


@bp.get("/openapi.json")
def openapi() -> Response:
    return _json(openapi_document(float(current_app.config["MAX_AMOUNT"])))


@bp.get("/docs")
def docs() -> Response:
    html = docs_page(openapi_document(float(current_app.config["MAX_AMOUNT"])))
    return Response(html, mimetype="text/html")


def empty() -> Response:
    """The benchmark baseline: the same server, no work."""
    return _json({})


def register_errors(app: Flask) -> None:
    """Every error is JSON {"error", "field", "message"}."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return _json(exc.to_payload(), exc.status)

    @app.errorhandler(DecisionLogError)
    def log_unavailable(exc: DecisionLogError) -> Response:
        app.logger.error("decision not logged: %s", exc)
        return _json(
            {
                "error": "decision_log_unavailable",
                "field": None,
                "message": "the decision could not be logged; retry with the same event_id",
            },
            503,
        )

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable) -> Response:
        app.logger.error("state store unavailable: %s", exc)
        return _json({"error": "store_unavailable", "field": None, "message": "retry later"}, 503)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        return _json({"error": name, "field": None, "message": exc.description}, code)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:  # pragma: no cover - a bug, logged loudly
        app.logger.exception("unexpected error")
        return _json({"error": "internal", "field": None, "message": "internal error"}, 500)
