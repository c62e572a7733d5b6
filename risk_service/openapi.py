"""The OpenAPI 3.1 document of every route, built from the schemas that validate requests.

Request schemas come from the validators' own tables (`requests.openapi_schemas`,
`feedback.feedback_schema`); this module adds the operations, the response bodies,
the Bearer security scheme and the error statuses, and renders a docs page.

**Errors and their ``field``.** Every error body is ``{"error", "field", "message"}``.
``field`` names what the client must change (`ERRORS_WITH_FIELD`): a dotted path into
the body for the 400s about one field, ``event_id`` for a 404 or 409 about an event,
``version`` for an admin change the registry refused, and ``Authorization`` for 401,
403 and 429. It is null (`ERRORS_WITHOUT_FIELD`) when no single field is at fault:
malformed JSON, a body that is not an object or nests too deep, 413, 415, an unknown
route (404), a method the route does not take (405), the refusals of the HTTP layer before
any route (a malformed request line, header or chunk, 408, 414, 417, 431, 501), and the
5xx answers.
``tests/test_fuzz_api.py`` holds every answer of the fuzzed service to this rule.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from typing import Any

from risk_service.auth import ADMIN, FEEDBACK, READ, SCORE
from risk_service.bundles import KINDS
from risk_service.feedback import feedback_schema
from risk_service.labels import LABEL_NAMES, LABEL_SOURCES
from risk_service.requests import MAX_ID_LENGTH, openapi_schemas

ERRORS_WITH_FIELD: dict[str, str] = {
    "missing_field": "the required field (dotted path) that is absent or null",
    "invalid_field": "the field (dotted path) whose type or value is refused",
    "unknown_field": "the field (dotted path) that no schema declares",
    "label_field": "the label field sent to /score (labels arrive through /feedback)",
    "not_found": "event_id, when no decision is logged for it (null: no such route)",
    "conflict": "event_id, already scored with another body",
    "refused": "version, the version the registry refused (for a rollback: the one to restore)",
    "unauthorized": "Authorization: no key, a malformed header or an unknown key",
    "forbidden": "Authorization: the key lacks the scope (or no keys and not on this machine)",
    "too_many_requests": "Authorization: too many failed attempts from this address",
}
"""Error codes whose ``field`` is never null, and what it names."""

ERRORS_WITHOUT_FIELD: dict[str, str] = {
    "malformed_json": "the body is not JSON (or not UTF-8)",
    "not_an_object": "the body is JSON but not an object",
    "too_deep": "the body nests deeper than the limit",
    "payload_too_large": "413: the body is over the size limit",
    "request_entity_too_large": "413: the declared length is over the limit",
    "unsupported_media_type": "415: the body is not application/json",
    "not_found": "404: no such route",
    "method_not_allowed": "405: the route does not take this method",
    "bad_request": "400: the HTTP request itself is malformed (its line, a header, a chunk)",
    "forbidden_client": "403: a PROXY-protocol or TLS client the server does not accept",
    "request_timeout": "408: the request was not received in time",
    "uri_too_long": "414: the request line is over the server's limit",
    "expectation_failed": "417: an Expect header other than 100-continue",
    "request_header_fields_too_large": "431: a header or the whole head is over the limit",
    "not_implemented": "501: a transfer coding the server does not read",
    "decision_log_unavailable": "503: retry with the same event_id",
    "store_unavailable": "503: retry later",
    "scoring_unavailable": "503: the scoring process exited; retry with the same event_id",
    "internal": "500: a bug, logged",
}
"""Error codes whose ``field`` is null (``not_found`` is in both: route vs event)."""

_REF = "#/components/schemas/"
_VERSION = {"type": "string", "minLength": 1, "maxLength": 128}
_OPEN = "Open: no key needed (OPEN_ENDPOINTS)."


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, _ref("Error"))


_ERROR_STATUSES: dict[str, str] = {
    "400": "Bad input: `field` names the field at fault (null for malformed JSON, a body "
    "that is not an object or nests too deep)",
    "401": "No API key, a malformed Authorization header or an unknown key; "
    "field: Authorization (with WWW-Authenticate: Bearer)",
    "403": "The key lacks the route's scope, or no keys are configured and the client is "
    "not on this machine; field: Authorization",
    "404": "No decision is logged for this event_id; field: event_id",
    "409": "Refused: see the operation",
    "413": "The body is over the size limit; field: null",
    "415": "The body is not application/json; field: null",
    "429": "Too many failed authentication attempts from this address (Retry-After); "
    "field: Authorization",
    "503": "The decision could not be made durable, the state store is down or the scoring "
    "process exited: retry with the same event_id; field: null",
    "408": "The request was not received in time (RISK_CLIENT_TIMEOUT_SECONDS); field: null",
    "414": "The request line is over the server's limit; field: null",
    "417": "An Expect header other than 100-continue; field: null",
    "431": "A header or the whole head is over the limit; field: null",
    "501": "A transfer coding the server does not read; field: null",
}
# What the server answers before any route sees the request, whatever the route
_PROTOCOL_ERRORS = ("408", "414", "417", "431", "501")
_BODY_ERRORS = ("400", "413", "415")
_AUTH_ERRORS = ("401", "403", "429")


def _operation(
    op_id: str,
    summary: str,
    ok: dict[str, Any],
    *,
    scope: str | None,
    body: dict[str, Any] | None = None,
    errors: tuple[str, ...] = (),
    described: dict[str, str] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One operation: `scope` None is an open route; otherwise it needs a key with `scope`."""
    codes = {*errors, *_PROTOCOL_ERRORS, "403"}  # 403: no keys and a remote client
    if scope is not None:
        codes.update(_AUTH_ERRORS)
    if body is not None:
        codes.update(_BODY_ERRORS)
    responses: dict[str, Any] = {"200": ok}
    for code in sorted(codes):
        responses[code] = _error((described or {}).get(code, _ERROR_STATUSES[code]))
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": op_id,
        "description": _OPEN if scope is None else f"Needs an API key with the {scope} scope.",
        "responses": responses,
        "security": [] if scope is None else [{"bearerAuth": []}],
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if parameters:
        op["parameters"] = parameters
    return op


def _admin_change(op_id: str, summary: str, ok: str, body: str) -> dict[str, Any]:
    """An admin change: its body, and 409 when the registry refuses it."""
    return _operation(
        op_id,
        summary,
        _json_response(ok, _ref("AdminChange")),
        scope=ADMIN,
        body=_ref(body),
        errors=("409",),
        described={
            "409": "The registry refused: no such version, verification failed, nothing to "
            "roll back to; field: version"
        },
    )


def _response_schemas() -> dict[str, Any]:
    """Bodies of the routes other than /score (whose schemas live beside its validator)."""
    nullable_str = {"type": ["string", "null"]}
    versions = {
        "type": "object",
        "properties": {k: nullable_str for k in KINDS},
        "additionalProperties": nullable_str,
    }
    audit_entry = {
        "type": "object",
        "description": "One line of the audit trail (risk_service/audit.py).",
        "properties": {
            "ts": {"type": "string"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "kind": {"type": "string"},
            "version": nullable_str,
            "previous": nullable_str,
            "outcome": {"type": "string", "enum": ["ok", "refused"]},
            "reason": nullable_str,
            "host": {"type": "string"},
        },
        "required": ["ts", "actor", "action", "kind", "version", "outcome"],
    }
    watcher = {
        "type": "object",
        "description": "This process's champion watcher: what it serves and what it refused.",
        "properties": {
            "models_dir": {"type": "string"},
            "interval_seconds": {"type": "number"},
            "running": {"type": "boolean"},
            "serving": {
                "type": ["object", "null"],
                "properties": {
                    "champions": versions,
                    "challengers": versions,
                    "policy_source": {"type": "string"},
                },
            },
            "errors": {"type": "array", "items": {"type": "object"}},
            "last_error": {"type": ["object", "null"]},
            "last_check": nullable_str,
            "last_swap": {"type": ["string", "object", "null"]},
        },
        "required": ["models_dir", "running", "serving", "errors", "last_error"],
    }
    registry_kind = {
        "type": "object",
        "properties": {
            "champion": nullable_str,
            "challenger": nullable_str,
            "history": {"type": "array", "items": {"type": "string"}},
            "versions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["champion", "challenger", "history", "versions"],
    }
    labels = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": list(LABEL_NAMES)},
                "value": {"type": "integer", "enum": [0, 1]},
                "label_time": {"type": "string"},
                "source": {"type": "string", "enum": list(LABEL_SOURCES)},
                "received_at": {"type": "string"},
            },
            "required": ["label", "value", "label_time", "source", "received_at"],
        },
    }
    number_or_null = {"type": ["number", "null"]}
    return {
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}},
            "required": ["status"],
        },
        "Ready": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "details": {"type": "object"},
            },
            "required": ["status", "checks", "details"],
        },
        "Models": {
            "type": "object",
            "properties": {
                "models": {
                    "type": "object",
                    "description": "Manifest of each loaded bundle (null: none loaded).",
                    "properties": {k: {"type": ["object", "null"]} for k in ("fraud", "credit")},
                    "required": ["fraud", "credit"],
                },
                "policy_version": {"type": "string"},
            },
            "required": ["models", "policy_version"],
        },
        "Decision": {
            "type": "object",
            "description": "A logged decision; identifiers in request/response are keyed hashes.",
            "properties": {
                "event_id": {"type": "string"},
                "decision": {"type": "string"},
                "created_at": nullable_str,
                "fraud_probability": number_or_null,
                "fraud_score": {"type": ["integer", "null"]},
                "credit_probability_of_default": number_or_null,
                "rules_fired": {"type": "array", "items": {"type": "object"}},
                "reasons": {"type": "array", "items": {"type": "object"}},
                "features": {"type": "object", "additionalProperties": number_or_null},
                "model_versions": {"type": "object"},
                "policy_version": {"type": "string"},
                "degraded": {"type": "boolean"},
                "latency_ms": number_or_null,
                "shadow": {"type": ["object", "null"]},
                "request": {"type": "object"},
                "response": {"type": ["object", "null"]},
                "other_answers": {
                    "type": "array",
                    "description": "Other acknowledged answers to the same request, kept "
                    "beside this one: a retry answered (degraded) while neither the state "
                    "store nor the log could tell the event was known. Usually empty.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "decision": {"type": "string"},
                            "degraded": {"type": "boolean"},
                            "created_at": nullable_str,
                            "response": {"type": ["object", "null"]},
                        },
                        "required": ["decision", "degraded", "created_at", "response"],
                    },
                },
                "labels": labels,
            },
            "required": [
                "event_id",
                "decision",
                "features",
                "model_versions",
                "other_answers",
                "labels",
            ],
        },
        "FeedbackRequest": feedback_schema(),
        "FeedbackResponse": {
            "type": "object",
            "properties": {
                "event_id": {"type": "string"},
                "label": {"type": "string", "enum": list(LABEL_NAMES)},
                "value": {"type": "integer", "enum": [0, 1]},
                "label_time": {"type": "string"},
                "source": {"type": "string", "enum": list(LABEL_SOURCES)},
                "stored": {"const": True},
                "online_state": {
                    "type": "string",
                    "enum": ["applied", "duplicate", "ignored", "unknown"],
                    "description": "applied; duplicate (applied before); ignored (not a fraud "
                    "label); unknown (the event is no longer in the idempotency window)",
                },
            },
            "required": ["event_id", "label", "value", "label_time", "source", "stored"],
        },
        "AdminChange": {
            "type": "object",
            "description": "The audit entry of the change, the kind's registry entry after it, "
            "and whether this process swapped at once (the others follow their watchers).",
            "allOf": [audit_entry],
            "properties": {
                "champion": nullable_str,
                "challenger": nullable_str,
                "swapped_here": {"type": "boolean"},
            },
            "required": ["swapped_here"],
        },
        "AdminStatus": {
            "type": "object",
            "properties": {
                "registry": {"type": "object", "additionalProperties": registry_kind},
                "watcher": {"oneOf": [watcher, {"type": "null"}]},
                "recent_audit": {"type": "array", "items": audit_entry},
            },
            "required": ["registry", "watcher", "recent_audit"],
        },
        "AdminReload": {
            "type": "object",
            "properties": {"swapped_here": {"type": "boolean"}, "watching": {"type": "boolean"}},
            "required": ["swapped_here", "watching"],
        },
        "AdminKind": {
            "type": "object",
            "description": "Rollback: the kind to restore (its previous champion).",
            "properties": {
                "kind": {"type": "string", "enum": list(KINDS)},
                "version": {**_VERSION, "type": ["string", "null"]},
            },
            "required": ["kind"],
        },
        "AdminVersion": {
            "type": "object",
            "description": "Promote: the version to make champion (verified first).",
            "properties": {"kind": {"type": "string", "enum": list(KINDS)}, "version": _VERSION},
            "required": ["kind", "version"],
        },
        "AdminChallenger": {
            "type": "object",
            "description": "The challenger to name (verified first), or null to clear it.",
            "properties": {
                "kind": {"type": "string", "enum": list(KINDS)},
                "version": {**_VERSION, "type": ["string", "null"]},
            },
            "required": ["kind", "version"],
        },
    }


def _error_description() -> str:
    with_field = "; ".join(f"{k}: {v}" for k, v in ERRORS_WITH_FIELD.items())
    without = "; ".join(f"{k}: {v}" for k, v in ERRORS_WITHOUT_FIELD.items())
    return f"field names the field at fault. With a field: {with_field}. Null: {without}."


@lru_cache(maxsize=4)
def _document(max_amount: float) -> str:
    score_409 = "The event_id was already scored with another body; field: event_id"
    text = {"type": "string"}
    schemas = {**openapi_schemas(max_amount), **_response_schemas()}
    schemas["Error"]["description"] = _error_description()
    paths: dict[str, Any] = {
        "/score": {
            "post": _operation(
                "score",
                "Score one event: a decision, fraud and credit risk, reasons",
                _json_response("The decision (also for a retried event_id)", _ref("ScoreResponse")),
                scope=SCORE,
                body=_ref("ScoreRequest"),
                errors=("409", "503"),
                described={"409": score_409},
            )
        },
        "/feedback": {
            "post": _operation(
                "feedback",
                "A label for a scored event: stored beside its decision, fed to the state",
                _json_response("Stored", _ref("FeedbackResponse")),
                scope=FEEDBACK,
                body=_ref("FeedbackRequest"),
                errors=("404", "503"),
            )
        },
        "/decisions/{event_id}": {
            "get": _operation(
                "decision",
                "The logged decision: features, reasons, versions, shadow result and labels",
                _json_response("The decision", _ref("Decision")),
                scope=READ,
                errors=("404",),
                parameters=[
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
            )
        },
        "/health": {
            "get": _operation(
                "health", "Alive", _json_response("alive", _ref("Health")), scope=None
            )
        },
        "/ready": {
            "get": _operation(
                "ready",
                "Models loaded and verified, decisions can be made durable",
                _json_response("ready", _ref("Ready")),
                scope=None,
                errors=("503",),
                described={"503": "Not ready (same body as 200, status not_ready)"},
            )
        },
        "/models": {
            "get": _operation(
                "models",
                "The loaded model bundles and their manifests",
                _json_response("manifests", _ref("Models")),
                scope=READ,
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics (text exposition format)",
                {"description": "metrics", "content": {"text/plain": {"schema": text}}},
                scope=None,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document",
                _json_response("OpenAPI 3.1", {"type": "object"}),
                scope=None,
            )
        },
        "/docs": {
            "get": _operation(
                "docs",
                "This document as a page",
                {"description": "HTML", "content": {"text/html": {"schema": text}}},
                scope=None,
            )
        },
        "/admin/status": {
            "get": _operation(
                "admin_status",
                "Registry, this process's watcher, the last audit entries",
                _json_response("status", _ref("AdminStatus")),
                scope=ADMIN,
            )
        },
        "/admin/promote": {
            "post": _admin_change(
                "admin_promote",
                "Make a version the champion (verified first; audited)",
                "promoted",
                "AdminVersion",
            )
        },
        "/admin/rollback": {
            "post": _admin_change(
                "admin_rollback",
                "Restore the previous champion (verified first; audited)",
                "rolled back",
                "AdminKind",
            )
        },
        "/admin/challenger": {
            "post": _admin_change(
                "admin_challenger",
                "Name the challenger scored in shadow, or clear it (audited)",
                "named or cleared",
                "AdminChallenger",
            )
        },
        "/admin/reload": {
            "post": _operation(
                "admin_reload",
                "Check the registry now instead of at the watcher's next round",
                _json_response("checked", _ref("AdminReload")),
                scope=ADMIN,
            )
        },
    }
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "risk-service",
            "version": "1",
            "description": "Fraud and credit risk decisions for payments. With API keys "
            "configured every route but the open ones (/health, /ready, /metrics, "
            "/openapi.json, /docs by default) needs `Authorization: Bearer <key>` with the "
            "route's scope; with none configured the service answers clients on its own "
            f"machine only. Ids are at most {MAX_ID_LENGTH} characters.",
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (RISK_API_KEYS or RISK_API_KEYS_FILE); scopes "
                    "score, feedback, read, admin.",
                }
            },
        },
    }
    return json.dumps(doc, sort_keys=True)


def openapi_document(max_amount: float) -> dict[str, Any]:
    """A fresh copy of the document (callers may not mutate the cached one)."""
    return dict(json.loads(_document(max_amount)))


def _schema_summary(field: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in field.items() if k != "description"})


def docs_page(document: dict[str, Any]) -> str:
    """A self-contained, human-readable page: each operation, then each schema's fields."""
    esc = html.escape
    parts = [f"<h1>{esc(document['info']['title'])} API</h1>"]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            parts.append(f"<h2>{method.upper()} {esc(path)}</h2><p>{esc(op['summary'])}</p>")
            parts.append(f"<p>{esc(op.get('description', ''))}</p>")
            codes = ", ".join(f"{c} {esc(r['description'])}" for c, r in op["responses"].items())
            parts.append(f"<p>Responses: {codes}</p>")
    for name, schema in document["components"]["schemas"].items():
        parts.append(f"<h2>{esc(name)}</h2>")
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        if not properties:
            parts.append(f"<pre>{esc(json.dumps(schema, indent=2))}</pre>")
            continue
        if schema.get("description"):
            parts.append(f"<p>{esc(schema['description'])}</p>")
        rows = "".join(
            f"<tr><td><code>{esc(k)}</code></td><td>{'yes' if k in required else ''}</td>"
            f"<td>{esc(str(v.get('description', '')))}</td>"
            f"<td><code>{esc(_schema_summary(v))}</code></td></tr>"
            for k, v in properties.items()
        )
        parts.append(
            "<table><tr><th>field</th><th>required</th><th>meaning</th><th>schema</th></tr>"
            f"{rows}</table>"
        )
    style = "body{font-family:sans-serif;max-width:1000px;margin:auto}td{border:1px solid #ccc}"
    head = f"<head><meta charset='utf-8'><title>API</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(parts)}</body></html>"
