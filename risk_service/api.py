"""HTTP routes: parse the request, call the core, render JSON. Nothing else happens here."""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from risk_service import metrics
from risk_service.decision_log import DecisionLogError
from risk_service.errors import ApiError, InvalidField, NotFound, UnsupportedMediaType
from risk_service.feedback import parse_feedback
from risk_service.openapi import docs_page, openapi_document
from risk_service.redis_state import StoreUnavailable
from risk_service.requests import parse_json_body, validate_score_request
from risk_service.scoring import Scorer, logged_entities
from risk_service.timeutil import iso_ms, ms_to_datetime

bp = Blueprint("risk", __name__)

try:  # the server's errors while it reads a body for us (gunicorn's chunked framing)
    from gunicorn.http.errors import ParseException

    HTTP_PARSE_ERRORS: tuple[type[Exception], ...] = (ParseException,)
except ImportError:  # another WSGI server: werkzeug turns its own into a 400
    HTTP_PARSE_ERRORS = ()


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        mimetype="application/json",
    )


def _scorer() -> Scorer:
    scorer: Scorer = current_app.extensions["risk"]
    return scorer


def read_json_body() -> Any:
    """The request's JSON body within the configured size and depth limits (else a 4xx)."""
    config = current_app.config
    max_bytes = int(config["MAX_BODY_BYTES"])
    return parse_json_body(
        _body_bytes(max_bytes), request.content_type, max_bytes, int(config["MAX_JSON_DEPTH"])
    )


def _body_bytes(max_bytes: int) -> bytes:
    """The raw body. A Content-Length within the limit, without chunked framing, is read
    straight from the server's input: werkzeug's stream wrappers cost more than the read
    (~10-30 µs a request); a client that sent less gets a 400 either way (its JSON is cut).
    Anything else takes werkzeug's way, with its checks (413 from the header, chunked
    bodies)."""
    environ = request.environ
    coding = environ.get("HTTP_CONTENT_ENCODING")
    if coding is not None and coding.strip().lower() not in ("", "identity"):
        # read as it is, a gzip body would be "malformed JSON": the wrong thing to fix
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:40]!r} is not supported: send the JSON uncompressed"
        )
    header = environ.get("CONTENT_LENGTH", "")
    length = int(header) if header.isascii() and header.isdigit() else max_bytes + 1
    framing = environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    chunked = "chunked" in framing
    if chunked and framing.replace(" ", "") != "chunked":  # gzip, chunked: not decoded
        raise ApiError(
            f"Transfer-Encoding {framing[:40]!r}: only chunked is supported",
            status=501,
            error="not_implemented",
        )
    try:
        if length <= max_bytes and not chunked:
            body: bytes = environ["wsgi.input"].read(length)
            return body
        return request.get_data(cache=False)
    except HTTP_PARSE_ERRORS as exc:  # e.g. a chunk size that is not hex: the client's fault
        raise ApiError(f"the request body is malformed: {exc}") from None


@bp.post("/score")
def score() -> Response:
    config = current_app.config
    body = read_json_body()
    validated = validate_score_request(
        body,
        now_ms=int(time.time() * 1000),
        max_future_ms=int(config["MAX_FUTURE_SECONDS"]) * 1000,
        max_amount=float(config["MAX_AMOUNT"]),
    )
    response, replayed = _scorer().score_request(validated)
    metrics.observe_score(response, kind=validated.kind, replayed=replayed)
    return _json(response)


@bp.post("/feedback")
def feedback() -> Response:
    """A label for a scored event: stored beside its decision, fed to the online state."""
    config = current_app.config
    body = read_json_body()
    label = parse_feedback(
        body,
        now_ms=int(time.time() * 1000),
        max_future_ms=int(config["MAX_FUTURE_SECONDS"]) * 1000,
    )
    scorer = _scorer()
    record = scorer.log.get(label.event_id)
    if record is None:
        raise NotFound(f"no decision is logged for event_id {label.event_id!r}", field="event_id")
    event = record.request.get("event", {})
    if label.label_time_ms < int(event.get("timestamp_ms", 0)):
        raise InvalidField("label_time is before the event itself", field="label_time")
    scorer.log.add_label(label)  # durable first: the training set must not miss it
    state = scorer.ingest_label(
        label.event_id,
        label.value if label.label == "is_fraud" else 0,
        ms_to_datetime(label.label_time_ms),
        logged_entities(record),
    )
    return _json(
        {
            "event_id": label.event_id,
            "label": label.label,
            "value": label.value,
            "label_time": iso_ms(label.label_time_ms),
            "source": label.source,
            "stored": True,
            "online_state": state,
        }
    )


@bp.get("/decisions/<path:event_id>")  # an event_id may hold a "/"
def decision(event_id: str) -> Response:
    """The logged decision: features by name, reasons, versions, shadow result and labels."""
    scorer = _scorer()
    record = scorer.log.get(event_id)
    if record is None:
        raise NotFound(f"no decision is logged for event_id {event_id!r}", field="event_id")
    return _json(
        {
            "event_id": record.event_id,
            "decision": record.decision,
            "created_at": None if record.created_at_ms is None else iso_ms(record.created_at_ms),
            "fraud_probability": record.fraud_probability,
            "fraud_score": record.fraud_score,
            "credit_probability_of_default": record.credit_pd,
            "rules_fired": list(record.rules_fired),
            "reasons": list(record.reasons),
            "features": dict(record.features),
            "model_versions": dict(record.model_versions),
            "policy_version": record.policy_version,
            "degraded": record.degraded,
            "latency_ms": record.latency_ms,
            "shadow": record.shadow,
            "request": record.request,  # identifiers as their keyed hashes
            "response": record.response,
            "other_answers": [  # the same request answered again, rarely: docs/operations.md
                {
                    "decision": other.decision,
                    "degraded": other.degraded,
                    "created_at": None
                    if other.created_at_ms is None
                    else iso_ms(other.created_at_ms),
                    "response": other.response,
                }
                for other in scorer.log.other_answers(event_id)
            ],
            "labels": [
                {
                    "label": x.label,
                    "value": x.value,
                    "label_time": iso_ms(x.label_time_ms),
                    "source": x.source,
                    "received_at": iso_ms(x.received_at_ms),
                }
                for x in scorer.log.labels(event_id)
            ],
        }
    )


@bp.get("/health")
def health() -> Response:
    """Alive: the process answers."""
    return _json({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Ready to take traffic: models loaded and verified, and decisions can be made durable.

    A slow or absent Redis, or a PostgreSQL whose decisions go to the local spool,
    leaves the service ready (it answers, degraded where it must, and loses nothing);
    the details say so, for dashboards. Not ready: no fraud model, or a log that
    cannot store anything (e.g. it refused its schema or key).
    """
    scorer = _scorer()
    checks: dict[str, Any] = {"fraud_model": scorer.models.fraud is not None}
    try:
        log_status = scorer.log.status()
        checks["decision_log"] = not log_status.get("error")
    except Exception:  # any failure here means not ready; the detail goes to the log
        current_app.logger.exception("decision log status failed")
        log_status = {"error": "status failed"}
        checks["decision_log"] = False
    details: dict[str, Any] = {"decision_log": log_status}
    if scorer.shared is not None:
        details["state_store"] = {
            "backend": "redis",
            "breaker": scorer.shared.breaker.state,
            "backlog": len(scorer.backlog),
        }
    watcher = current_app.extensions.get("risk_watcher")
    if watcher is not None and watcher.last_error is not None:
        details["refused_versions"] = [r.as_dict() for r in watcher.errors.values()]
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not_ready", "checks": checks, "details": details}
    return _json(body, 200 if ok else 503)


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
        response = _json({"error": name, "field": None, "message": exc.description}, code)
        for header, value in exc.get_headers():  # e.g. Allow on a 405
            if header.lower() != "content-type":
                response.headers[header] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:  # pragma: no cover - a bug, logged loudly
        app.logger.exception("unexpected error")
        return _json({"error": "internal", "field": None, "message": "internal error"}, 500)
