"""The OpenAPI 3.1 document, built from the same schemas that validate requests, and a docs page."""

from __future__ import annotations

import html
import json
from functools import lru_cache
from typing import Any

from risk_service.requests import openapi_schemas

ERROR_RESPONSE = {
    "description": "Bad input: the field at fault is named",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _error(description: str) -> dict[str, Any]:
    return {**ERROR_RESPONSE, "description": description}


@lru_cache(maxsize=4)
def _document(max_amount: float) -> str:
    json_ok = {"content": {"application/json": {"schema": {"type": "object"}}}}
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "risk-service",
            "version": "1",
            "description": "Fraud and credit risk decisions for payments.",
        },
        "paths": {
            "/score": {
                "post": {
                    "summary": "Score one event: a decision, fraud and credit risk, reasons",
                    "operationId": "score",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ScoreRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The decision (also for a retried event_id)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ScoreResponse"}
                                }
                            },
                        },
                        "400": _error("Bad input: the field at fault is named"),
                        "409": _error("The event_id was already scored with another body"),
                        "413": _error("The body is over the size limit"),
                        "415": _error("The body is not JSON"),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Alive",
                    "operationId": "health",
                    "responses": {"200": {"description": "alive", **json_ok}},
                }
            },
            "/ready": {
                "get": {
                    "summary": "Models loaded and verified, stores reachable",
                    "operationId": "ready",
                    "responses": {
                        "200": {"description": "ready", **json_ok},
                        "503": {"description": "not ready", **json_ok},
                    },
                }
            },
            "/models": {
                "get": {
                    "summary": "The loaded model bundles and their manifests",
                    "operationId": "models",
                    "responses": {"200": {"description": "manifests", **json_ok}},
                }
            },
        },
        "components": {"schemas": openapi_schemas(max_amount)},
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
            codes = ", ".join(f"{c} {esc(r['description'])}" for c, r in op["responses"].items())
            parts.append(f"<p>Responses: {codes}</p>")
    for name, schema in document["components"]["schemas"].items():
        parts.append(f"<h2>{esc(name)}</h2>")
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        if not properties:
            parts.append(f"<pre>{esc(json.dumps(schema, indent=2))}</pre>")
            continue
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
