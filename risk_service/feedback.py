"""POST /feedback bodies: one label for one scored event, validated field by field.

``{"event_id", "is_fraud" | "defaulted", "label_time", "source"}``. Exactly one of
``is_fraud`` and ``defaulted`` (0/1 or false/true). ``label_time`` is when the
outcome became known (a chargeback's date, not the payment's): it may not be in
the future, and it decides from when the label counts, in features and in
training sets. Every error names its field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from risk_service.errors import InvalidField, MissingField, NotAnObject, UnknownField
from risk_service.labels import LABEL_NAMES, LABEL_SOURCES, LabelRecord
from risk_service.requests import MAX_ID_LENGTH, id_problem
from risk_service.timeutil import parse_instant

FEEDBACK_FIELDS: tuple[str, ...] = ("event_id", *LABEL_NAMES, "label_time", "source")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_feedback(body: Any, *, now_ms: int, max_future_ms: int) -> LabelRecord:
    """The label a feedback body carries; raises an ApiError (400) naming the field at fault."""
    if not isinstance(body, dict):
        raise NotAnObject("the body must be a JSON object", field=None)
    for name in body:
        if name not in FEEDBACK_FIELDS:
            raise UnknownField(
                f"unknown field {name!r}; expected {', '.join(FEEDBACK_FIELDS)}", field=name
            )
    event_id = body.get("event_id")
    if event_id is None:
        raise MissingField("event_id is required", field="event_id")
    problem = id_problem(event_id)
    if problem is not None:
        raise InvalidField(f"event_id {problem}", field="event_id")
    given = [name for name in LABEL_NAMES if body.get(name) is not None]
    if not given:
        raise MissingField("exactly one of is_fraud and defaulted is required", field="is_fraud")
    if len(given) > 1:
        raise InvalidField(
            f"only one of is_fraud and defaulted may be given; got both, drop {given[1]}",
            field=given[1],
        )
    label = given[0]
    value = body[label]
    if type(value) is bool:
        value = int(value)
    if type(value) is not int or value not in (0, 1):
        raise InvalidField(f"{label} must be 0, 1, false or true", field=label)
    source = body.get("source")
    if source is None:
        raise MissingField("source is required", field="source")
    if source not in LABEL_SOURCES:
        raise InvalidField(f"source must be one of {', '.join(LABEL_SOURCES)}", field="source")
    raw_time = body.get("label_time")
    if raw_time is None:
        raise MissingField(
            "label_time is required (when the outcome became known)", field="label_time"
        )
    if type(raw_time) is not str or len(raw_time) > 64:
        raise InvalidField("label_time must be an ISO 8601 date-time string", field="label_time")
    try:
        label_ms = (parse_instant(raw_time) - _EPOCH) // _MS
    except (ValueError, OverflowError):
        raise InvalidField(
            "label_time is not an ISO 8601 date-time (e.g. 2026-11-25T13:00:00Z)",
            field="label_time",
        ) from None
    if label_ms < 0:
        raise InvalidField("label_time is before 1970", field="label_time")
    if label_ms - now_ms > max_future_ms:
        raise InvalidField("label_time is in the future", field="label_time")
    return LabelRecord(event_id, label, value, int(label_ms), str(source), now_ms)


def feedback_schema() -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.1) of a feedback body: the rules `parse_feedback` applies.

    Exactly one of ``is_fraud`` and ``defaulted`` is non-null (the ``oneOf``). Rules a
    schema cannot state are in the descriptions: ``label_time`` may not be in the future
    (beyond the clock tolerance) nor before the event; the event must have been scored.
    """
    label = {"oneOf": [{"type": "integer", "enum": [0, 1]}, {"type": "boolean"}]}
    return {
        "type": "object",
        "description": "One label for one scored event. Unknown fields are refused.",
        "properties": {
            "event_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ID_LENGTH,
                "description": "The scored event (its decision must be in the log, else 404).",
            },
            "is_fraud": {
                "oneOf": [*label["oneOf"], {"type": "null"}],
                "description": "1 (or true): the event was fraud; 0: it was not.",
            },
            "defaulted": {
                "oneOf": [*label["oneOf"], {"type": "null"}],
                "description": "1 (or true): the credit defaulted; 0: it did not.",
            },
            "label_time": {
                "type": "string",
                "maxLength": 64,
                "examples": ["2026-11-25T13:00:00Z"],
                "description": "When the outcome became known, ISO 8601 (naive = UTC); "
                "not in the future, not before the event.",
            },
            "source": {"type": "string", "enum": list(LABEL_SOURCES)},
        },
        "required": ["event_id", "label_time", "source"],
        "oneOf": [{"required": [name], "properties": {name: label}} for name in LABEL_NAMES],
        "additionalProperties": False,
    }
