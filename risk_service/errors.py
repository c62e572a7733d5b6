"""Domain exceptions that carry an HTTP status and the JSON error body, so one handler renders all.

Every error a client can cause is an ``ApiError``; the web layer registers one
handler that answers ``status`` with ``to_payload()`` as JSON. This module
imports nothing from Flask, so the request validation and the scoring core can
raise these without knowing about the web layer.

Status codes: 400 for every problem with the body (syntax, type, range,
missing, unknown or forbidden fields: one status, distinguished by ``error``),
404, 409, 413 and 415 for what their names say.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A client-visible error: ``status`` plus the body ``{"error", "field", "message"}``."""

    status: int = 400
    error: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error

    def to_payload(self) -> dict[str, Any]:
        """The JSON error body; ``field`` is a dotted path (``account.kyc_level``) or None."""
        return {"error": self.error, "field": self.field, "message": self.message}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, error={self.error!r}, "
            f"field={self.field!r}, message={self.message!r})"
        )


class InvalidField(ApiError):
    """A field has the wrong type or a value outside its allowed range or set."""

    error = "invalid_field"


class MissingField(ApiError):
    """A required field is absent (or null)."""

    error = "missing_field"


class UnknownField(ApiError):
    """A field that no schema declares: refused so typos such as ``ammount`` are caught."""

    error = "unknown_field"


class LabelField(ApiError):
    """A label column (is_fraud, label_time, ...) sent to /score: labels arrive as feedback."""

    error = "label_field"


class MalformedJson(ApiError):
    """The body is not valid JSON (or not UTF-8)."""

    error = "malformed_json"


class NotAnObject(ApiError):
    """The body is valid JSON but not a JSON object."""

    error = "not_an_object"


class TooDeep(ApiError):
    """The body nests deeper than the configured limit."""

    error = "too_deep"


class UnsupportedMediaType(ApiError):
    status = 415
    error = "unsupported_media_type"


class PayloadTooLarge(ApiError):
    status = 413
    error = "payload_too_large"


class Conflict(ApiError):
    """The same idempotency key (event_id) with a different body."""

    status = 409
    error = "conflict"


class NotFound(ApiError):
    status = 404
    error = "not_found"


ERROR_CODES: tuple[str, ...] = (
    "bad_request",
    InvalidField.error,
    MissingField.error,
    UnknownField.error,
    LabelField.error,
    MalformedJson.error,
    NotAnObject.error,
    TooDeep.error,
    UnsupportedMediaType.error,
    PayloadTooLarge.error,
    Conflict.error,
    NotFound.error,
    # the edge (web.py): missing or unknown key, missing scope, too many failures
    "unauthorized",
    "forbidden",
    "too_many_requests",
    # admin (api_admin.py): the registry refused the change
    "refused",
    # a store could not take the decision or the label: retry with the same body
    "decision_log_unavailable",
    "store_unavailable",
    # werkzeug's own errors, by name (api.register_errors)
    "not_found",
    "method_not_allowed",
    "request_entity_too_large",
)
"""Every ``error`` code the service answers with (the OpenAPI error schema lists them)."""
