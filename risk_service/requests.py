"""Parsing and validating one ``POST /score`` body into a ``ScoreRequest``, and its JSON Schemas.

The request uses the canonical column names of ``risk_service.schema``. The field
tables below are derived from those columns; the validator and the JSON Schemas
returned by ``openapi_schemas()`` are both generated from them, so they cannot
disagree.

Decisions, in one place:

* **Two kinds of body.** ``event_type`` in ``schema.EVENT_TYPES`` is a payment
  event (the ``events`` columns). ``event_type == "credit_application"`` carries
  the ``credit`` columns; its idempotency key is ``event_id`` (required, as for
  every request), and ``application_id`` is optional and defaults to ``event_id``.
* **Unknown fields are refused** (400, ``unknown_field``, naming the field), so a
  typo such as ``ammount`` is never silently ignored. Label columns (``is_fraud``,
  ``label_time``, ``fraud_scenario``, ``defaulted``) are refused with
  ``label_field``: labels reach the service as feedback events, never with a score.
* **One status for bad bodies.** Every problem with the body is a 400 whose
  ``error`` says what kind (``malformed_json``, ``not_an_object``, ``too_deep``,
  ``missing_field``, ``invalid_field``, ``unknown_field``, ``label_field``) and
  whose ``field`` is a dotted path (``account.kyc_level``). Only the transport
  problems differ: 413 (too large) and 415 (not JSON).
* **null means absent** for optional fields; for a required field it is missing.
* **Amounts** must be JSON numbers (not strings, not booleans), finite, > 0,
  <= ``max_amount``, with at most two decimals; more decimals are refused, never
  rounded, so the amount logged is the amount sent. ``requested_limit`` follows
  the same rule.
* **Instants** are ISO 8601 strings read by ``timeutil.parse_instant`` (naive =
  UTC), normalised to UTC with a ``Z`` suffix (``2026-11-25T13:00:00Z``); the event
  also carries ``timestamp_ms``. A timestamp more than ``max_future_ms`` after
  ``now_ms``, or before 1970, is refused.
* **Identifiers** are non-empty strings of at most 128 characters, kept exactly
  as sent (no trimming or case folding that could make two ids collide).
* **The body hash** (``canonical_body_hash``) is SHA-256 over the validated
  event and account, serialised with sorted keys, so key order and equivalent
  spellings (``100`` / ``100.0``, ``+00:00`` / ``Z``) hash alike. ``explain`` is
  not part of it: asking for reasons on a retry is the same event.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from risk_service import schema
from risk_service.errors import (
    ApiError,
    InvalidField,
    LabelField,
    MalformedJson,
    MissingField,
    NotAnObject,
    PayloadTooLarge,
    TooDeep,
    UnknownField,
    UnsupportedMediaType,
)
from risk_service.scores import DECISIONS, FRAUD_BANDS
from risk_service.timeutil import parse_instant

CREDIT_APPLICATION = "credit_application"
MAX_ID_LENGTH = 128
MAX_INSTANT_LENGTH = 64
DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000
DEFAULT_MAX_AMOUNT = 1e9
LABEL_FIELDS: frozenset[str] = schema.LABEL_COLUMNS | schema.CREDIT_LABEL_COLUMNS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class FieldSpec:
    """One request field: its JSON type, constraints and meaning (validator and schema read it)."""

    name: str
    kind: str  # id | code | enum | instant | money | number | integer | bool | object
    required: bool
    doc: str
    allowed: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    not_future: bool = False  # instants: refuse more than max_future_ms after now
    path: str = ""  # dotted path used in errors; set by _specs

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.name)


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """A validated /score body: canonical event fields, optional inline profile, options."""

    kind: str  # "payment" (any schema.EVENT_TYPES) or "credit_application"
    event: dict[str, Any]  # canonical names; timestamp as UTC ISO string plus timestamp_ms
    account: dict[str, Any] | None  # accounts-table profile, account_id filled in
    explain: bool
    canonical_body_hash: str

    @property
    def event_id(self) -> str:
        return str(self.event["event_id"])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its fields in order, as each crosses to the scoring process: a frozen
        slots class unpickles through a setattr a field, 10 against 4.5 µs a request."""
        fields = (self.kind, self.event, self.account, self.explain, self.canonical_body_hash)
        return (ScoreRequest, fields)

    @property
    def timestamp_ms(self) -> int:
        return int(self.event["timestamp_ms"])


# ---------------------------------------------------------------- field tables
_KIND_OF_DTYPE = {"string": "id", "timestamp": "instant", "float64": "number", "int8": "integer"}
_OVERRIDES: dict[str, dict[str, Any]] = {
    "timestamp": {"not_future": True},
    "amount": {"kind": "money"},
    "requested_limit": {"kind": "money"},
    "currency": {"kind": "code"},
    "latitude": {"minimum": -90.0, "maximum": 90.0},
    "longitude": {"minimum": -180.0, "maximum": 180.0},
    "home_latitude": {"minimum": -90.0, "maximum": 90.0},
    "home_longitude": {"minimum": -180.0, "maximum": 180.0},
    "age": {"kind": "integer", "minimum": 0, "maximum": 150},
    "monthly_income": {"minimum": 0.0},
    "credit_limit": {"minimum": 0.0},
}


def _from_column(col: schema.Column, prefix: str = "", **changes: Any) -> FieldSpec:
    kind = "enum" if col.allowed is not None else _KIND_OF_DTYPE.get(col.dtype, "number")
    fields: dict[str, Any] = {
        "name": col.name,
        "kind": kind,
        "required": col.required,
        "doc": col.doc,
        "allowed": col.allowed,
        "path": prefix + col.name,
    }
    fields.update(_OVERRIDES.get(col.name, {}))
    fields.update(changes)
    return FieldSpec(**fields)


PAYMENT_FIELDS: tuple[FieldSpec, ...] = tuple(
    _from_column(c) for c in schema.EVENT_COLUMNS if not c.label
)
_CREDIT_COLS = {c.name: c for c in schema.CREDIT_COLUMNS if not c.label}
CREDIT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("event_id", "id", True, "Unique identifier of the request (the idempotency key)."),
    FieldSpec(
        "event_type",
        "enum",
        True,
        "Always credit_application for this kind of request.",
        (CREDIT_APPLICATION,),
    ),
    _from_column(
        _CREDIT_COLS["application_id"],
        required=False,
        doc="Identifier of the credit decision point; defaults to event_id.",
    ),
    *(
        _from_column(_CREDIT_COLS[name])
        for name in ("account_id", "timestamp", "requested_limit", "application_type")
    ),
)
ACCOUNT_FIELDS: tuple[FieldSpec, ...] = tuple(
    _from_column(
        c,
        "account.",
        **(
            {"required": False, "doc": "The account; must equal the event's account_id."}
            if c.name == "account_id"
            else {}
        ),
    )
    for c in schema.ACCOUNT_COLUMNS
)
OPTION_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "account",
        "object",
        False,
        "The account's profile (accounts-table fields), inline; otherwise the profile store.",
    ),
    FieldSpec("explain", "bool", False, "Return reasons even for an approval (costs ~1-2 ms)."),
)
REQUEST_FIELDS: frozenset[str] = frozenset(f.name for f in (*PAYMENT_FIELDS, *CREDIT_FIELDS))
"""Every event field a request can carry (policy rules may name them)."""


# ---------------------------------------------------------------- checkers
Checker = Callable[[Any, FieldSpec, int, int, float], Any]


def _bad(spec: FieldSpec, message: str) -> InvalidField:
    return InvalidField(f"{spec.path} {message}", field=spec.path)


def id_problem(v: Any) -> str | None:
    """What is wrong with an identifier (event_id, account_id, ...), or None: the one rule
    for ids wherever a request carries them (/score, /feedback)."""
    if type(v) is not str:
        return f"must be a string, got {_json_type(v)}"
    if not v or len(v) > MAX_ID_LENGTH:
        return f"must have 1 to {MAX_ID_LENGTH} characters, got {len(v)}"
    if "\x00" in v:  # no store keeps it as text (PostgreSQL refuses NUL in text)
        return "must not contain NUL characters"
    return None


def _check_id(v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float) -> Any:
    problem = id_problem(v)
    if problem is not None:
        raise _bad(spec, problem)
    return v


def _check_code(v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float) -> Any:
    if type(v) is not str or _CURRENCY.fullmatch(v) is None:
        raise _bad(spec, "must be an ISO 4217 code of three capital letters, such as CNY")
    return v


def _check_enum(v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float) -> Any:
    allowed = spec.allowed or ()
    if type(v) is float and v.is_integer() and type(allowed[0]) is int:
        v = int(v)
    if type(v) is bool or v not in allowed:
        shown = ", ".join(str(a) for a in allowed)
        raise _bad(spec, f"must be one of {shown}; got {_short(v)}")
    return v


def _check_instant(
    v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float
) -> Any:
    if type(v) is not str or len(v) > MAX_INSTANT_LENGTH or not v.isprintable():
        # not printable: a NUL or a line break, which the date parser would pass over
        raise _bad(spec, "must be an ISO 8601 date-time string, such as 2026-11-25T13:00:00Z")
    try:
        dt = parse_instant(v)
    except (ValueError, OverflowError):
        raise _bad(
            spec, f"is not an ISO 8601 date-time: {_short(v)} (e.g. 2026-11-25T13:00:00Z)"
        ) from None
    ms = (dt - _EPOCH) // _MS
    if ms < 0:
        raise _bad(spec, f"is before 1970: {_short(v)}")
    if spec.not_future and ms - now_ms > max_future_ms:
        raise _bad(spec, f"is more than {max_future_ms // 1000} s in the future: {_short(v)}")
    text = dt.isoformat()
    return (text[:-6] + "Z", ms)


def _number(v: Any, spec: FieldSpec) -> float:
    t = type(v)
    if t is int:
        if not -1e18 < v < 1e18:  # float() of a huge JSON integer would overflow
            raise _bad(spec, f"is out of range, got {_short(v)}")
        return float(v)
    if t is not float:
        raise _bad(spec, f"must be a number, got {_json_type(v)}")
    if not math.isfinite(v):
        raise _bad(spec, f"must be finite, got {v}")
    return float(v)


def _check_money(
    v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float
) -> Any:
    x = _number(v, spec)
    if x <= 0:
        raise _bad(spec, f"must be greater than 0, got {_short(v)}")
    if x > max_amount:
        raise _bad(spec, f"must be at most {max_amount:g}, got {_short(v)}")
    if round(x, 2) != x:
        raise _bad(spec, f"must have at most two decimals, got {_short(v)}")
    return x


def _check_number(
    v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float
) -> Any:
    x = _number(v, spec)
    lo = spec.minimum
    hi = spec.maximum if spec.maximum is not None else max_amount
    if (lo is not None and x < lo) or x > hi:
        raise _bad(spec, f"must be in [{'-inf' if lo is None else lo:g}, {hi:g}], got {_short(v)}")
    return x


def _check_integer(
    v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float
) -> Any:
    if type(v) is float and math.isfinite(v) and v.is_integer():
        v = int(v)
    if type(v) is not int:
        raise _bad(spec, f"must be an integer, got {_short(v)}")
    lo, hi = spec.minimum, spec.maximum
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _bad(spec, f"must be in [{lo}, {hi}], got {v}")
    return v


def _check_bool(v: Any, spec: FieldSpec, now_ms: int, max_future_ms: int, max_amount: float) -> Any:
    if type(v) is not bool:
        raise _bad(spec, f"must be true or false, got {_json_type(v)}")
    return v


_CHECKERS: dict[str, Checker] = {
    "id": _check_id,
    "code": _check_code,
    "enum": _check_enum,
    "instant": _check_instant,
    "money": _check_money,
    "number": _check_number,
    "integer": _check_integer,
    "bool": _check_bool,
}


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    return type(v).__name__


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


_Plan = tuple[tuple[str, FieldSpec, Checker], ...]


def _plan(specs: tuple[FieldSpec, ...]) -> _Plan:
    return tuple((s.name, s, _CHECKERS[s.kind]) for s in specs if s.kind != "object")


_PAYMENT_PLAN = _plan(PAYMENT_FIELDS)
_CREDIT_PLAN = _plan(CREDIT_FIELDS)
_ACCOUNT_PLAN = _plan(ACCOUNT_FIELDS)
_OPTIONS = frozenset(f.name for f in OPTION_FIELDS)
_PAYMENT_NAMES = frozenset(f.name for f in PAYMENT_FIELDS) | _OPTIONS
_CREDIT_NAMES = frozenset(f.name for f in CREDIT_FIELDS) | _OPTIONS
_ACCOUNT_NAMES = frozenset(f.name for f in ACCOUNT_FIELDS)
_EVENT_TYPE_SPEC = FieldSpec(
    "event_type", "enum", True, "", (*schema.EVENT_TYPES, CREDIT_APPLICATION)
)


def _refuse_extra(obj: dict[str, Any], known: frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in known:
            if key in LABEL_FIELDS:
                raise LabelField(
                    f"{prefix}{key} is a label; labels are ingested as feedback, not scored",
                    field=prefix + key,
                )
            raise UnknownField(f"unknown field {prefix}{key}", field=prefix + key)


def _validate(
    obj: dict[str, Any], plan: _Plan, now_ms: int, max_future_ms: int, max_amount: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    get = obj.get
    for name, spec, check in plan:
        v = get(name)
        if v is None:
            if spec.required:
                raise MissingField(f"{spec.path} is required", field=spec.path)
            continue
        out[name] = check(v, spec, now_ms, max_future_ms, max_amount)
    return out


# ---------------------------------------------------------------- entry points
def validate_score_request(
    body: Any,
    *,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    max_amount: float = DEFAULT_MAX_AMOUNT,
) -> ScoreRequest:
    """Validate one decoded /score body; raise ``ApiError`` (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise NotAnObject(f"the body must be a JSON object, got {_json_type(body)}")
    event_type = body.get("event_type")
    if event_type is None:
        raise MissingField("event_type is required", field="event_type")
    _check_enum(event_type, _EVENT_TYPE_SPEC, now_ms, max_future_ms, max_amount)
    if event_type == CREDIT_APPLICATION:
        kind, plan, known = CREDIT_APPLICATION, _CREDIT_PLAN, _CREDIT_NAMES
    else:
        kind, plan, known = "payment", _PAYMENT_PLAN, _PAYMENT_NAMES
    _refuse_extra(body, known, "")
    event = _validate(body, plan, now_ms, max_future_ms, max_amount)
    event["timestamp"], event["timestamp_ms"] = event["timestamp"]
    if kind == CREDIT_APPLICATION and "application_id" not in event:
        event["application_id"] = event["event_id"]

    account: dict[str, Any] | None = None
    raw_account = body.get("account")
    if raw_account is not None:
        if not isinstance(raw_account, dict):
            raise InvalidField(
                f"account must be an object, got {_json_type(raw_account)}", field="account"
            )
        _refuse_extra(raw_account, _ACCOUNT_NAMES, "account.")
        account = _validate(raw_account, _ACCOUNT_PLAN, now_ms, max_future_ms, max_amount)
        account["created_at"] = account["created_at"][0]
        if account.setdefault("account_id", event["account_id"]) != event["account_id"]:
            raise InvalidField(
                "account.account_id must equal the event's account_id",
                field="account.account_id",
            )

    explain = body.get("explain")
    if explain is None:
        explain = False
    elif type(explain) is not bool:
        raise InvalidField(
            f"explain must be true or false, got {_json_type(explain)}", field="explain"
        )

    try:
        canonical = orjson.dumps({"account": account, "event": event}, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a lone surrogate (possible from a lenient JSON decoder): find it
        raise _unencodable(event, account) from None
    digest = hashlib.sha256(canonical).hexdigest()
    return ScoreRequest(kind, event, account, explain, digest)


def _unencodable(event: dict[str, Any], account: dict[str, Any] | None) -> InvalidField:
    for prefix, obj in (("", event), ("account.", account or {})):
        for key, value in obj.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return InvalidField(
                        f"{prefix}{key} is not valid UTF-8 text", field=prefix + key
                    )
    return InvalidField("the body cannot be serialised")


def parse_json_body(raw: bytes, content_type: str | None, max_bytes: int, max_depth: int) -> Any:
    """Decode a request body: 415 unless JSON, 413 over ``max_bytes``, 400 if malformed/too deep.

    orjson refuses NaN/Infinity literals and invalid UTF-8, and stops at its own
    nesting limit (1024) without recursing in Python; the depth against
    ``max_depth`` is then measured with an explicit stack. A number beyond the double
    range (``1e400``) is read as +-inf, for the validator to refuse naming its field.
    """
    if not _is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"the body must be application/json, got {content_type or 'no content type'}"
        )
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body is over {max_bytes} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        body = _loads_beyond_double(raw, exc)
    if not isinstance(body, dict):
        raise NotAnObject(f"the body must be a JSON object, got {_json_type(body)}")
    if _depth_exceeds(body, max_depth):
        raise TooDeep(f"the body nests deeper than {max_depth} levels")
    return body


def _loads_beyond_double(raw: bytes, error: orjson.JSONDecodeError) -> Any:
    """A body orjson refused only for a number beyond the double range (``1e400``).

    Such a number is valid JSON (RFC 8259 leaves the range to implementations), so the
    body is read by the standard parser, where it becomes +-inf and the validator refuses
    it naming its field ("must be finite"). The literals NaN and Infinity stay refused.
    Anything else orjson refused is malformed (400, no field).
    """
    malformed = MalformedJson(f"the body is not valid JSON: {error}")
    if "infinity when parsed" not in str(error):
        raise malformed from None

    def refuse(literal: str) -> Any:
        raise ValueError(f"{literal} is not JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise malformed from None


def _is_json_media_type(content_type: str | None) -> bool:
    """application/json or application/*+json; a charset, if given, must be UTF-8."""
    if not content_type:
        return False
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _depth_exceeds(obj: Any, max_depth: int) -> bool:
    """True if containers nest deeper than ``max_depth`` (the top-level object is depth 1)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


# ---------------------------------------------------------------- JSON Schemas
def _field_schema(spec: FieldSpec, max_amount: float) -> dict[str, Any]:
    s: dict[str, Any]
    if spec.kind == "id":
        s = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    elif spec.kind == "code":
        s = {"type": "string", "pattern": "^[A-Z]{3}$"}
    elif spec.kind == "enum":
        allowed = list(spec.allowed or ())
        s = {"type": "integer" if isinstance(allowed[0], int) else "string", "enum": allowed}
    elif spec.kind == "instant":
        s = {
            "type": "string",
            "maxLength": MAX_INSTANT_LENGTH,
            "examples": ["2026-11-25T13:00:00Z"],
        }
    elif spec.kind == "money":
        s = {  # > 0 with at most two decimals: so >= 0.01 (the smallest valid boundary)
            "type": "number",
            "exclusiveMinimum": 0,
            "minimum": 0.01,
            "maximum": max_amount,
            "x-max-decimals": 2,
        }
    elif spec.kind == "number":
        s = {"type": "number", "maximum": spec.maximum if spec.maximum is not None else max_amount}
        if spec.minimum is not None:
            s["minimum"] = spec.minimum
    elif spec.kind == "integer":
        s = {"type": "integer"}
        if spec.minimum is not None:
            s["minimum"] = spec.minimum
        if spec.maximum is not None:
            s["maximum"] = spec.maximum
    elif spec.kind == "bool":
        s = {"type": "boolean"}
    else:
        s = {"$ref": "#/components/schemas/AccountProfile"}
    doc = spec.doc
    if spec.kind == "instant":
        doc += " ISO 8601; without a zone it is UTC."
        if spec.not_future:
            doc += " At most a few minutes ahead of the server's clock."
    if spec.kind == "money":
        doc += " At most two decimals."
    if not spec.required and "$ref" not in s:
        s["type"] = [s["type"], "null"]
        if "enum" in s:
            s["enum"] = [*s["enum"], None]
    elif not spec.required:
        s = {"oneOf": [s, {"type": "null"}]}
    s["description"] = doc
    return s


def _object_schema(
    specs: tuple[FieldSpec, ...], description: str, max_amount: float
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {s.name: _field_schema(s, max_amount) for s in specs},
        "required": [s.name for s in specs if s.required],
        "additionalProperties": False,
    }


def _nullable(schema_: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema_, {"type": "null"}]}


_REF = "#/components/schemas/"


def openapi_schemas(max_amount: float = DEFAULT_MAX_AMOUNT) -> dict[str, Any]:
    """JSON Schemas (OpenAPI 3.1 ``components.schemas``) of the /score body, response and error."""
    payment = _object_schema(
        (*PAYMENT_FIELDS, *OPTION_FIELDS),
        "A payment event (canonical events-table fields). Unknown and label fields are refused.",
        max_amount,
    )
    credit = _object_schema(
        (*CREDIT_FIELDS, *OPTION_FIELDS),
        "A credit application (canonical credit-table fields); event_id is the idempotency key.",
        max_amount,
    )
    account = _object_schema(
        ACCOUNT_FIELDS, "The account's profile (accounts-table fields), inline.", max_amount
    )
    mapping = {t: _REF + "PaymentEvent" for t in schema.EVENT_TYPES}
    mapping[CREDIT_APPLICATION] = _REF + "CreditApplication"
    reason = {
        "type": "object",
        "properties": {
            "feature": {"type": "string"},
            "value": {"type": ["number", "string", "null"]},
            "contribution": {"type": "number"},
            "text": {"type": "string", "description": "A sentence an analyst understands."},
        },
        "required": ["feature", "value", "contribution", "text"],
    }
    reasons = {"type": "array", "items": {"$ref": _REF + "Reason"}}
    fraud = {
        "type": "object",
        "description": "Null when no fraud model scored the request (credit applications, "
        "degraded answers).",
        "properties": {
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "score": {"type": "integer", "minimum": 0, "maximum": 99},
            "band": {"type": "string", "enum": [name for _, name in FRAUD_BANDS]},
            "reasons": reasons,
        },
        "required": ["probability", "score", "band", "reasons"],
    }
    credit_result = {
        "type": "object",
        "description": "Present for credit applications and payments funded by credit_line.",
        "properties": {
            "probability_of_default": {"type": "number", "minimum": 0, "maximum": 1},
            "score": {"type": "number"},
            "band": {"type": "string"},
            "reasons": reasons,
            "recommended_limit": {"type": "number", "minimum": 0},
            "limit_check": {"type": ["object", "null"], "additionalProperties": True},
        },
        "required": [
            "probability_of_default",
            "score",
            "band",
            "reasons",
            "recommended_limit",
            "limit_check",
        ],
    }
    rule_fired = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "action": {"type": "string", "enum": list(DECISIONS)},
            "reason": {"type": "string"},
        },
        "required": ["name", "action", "reason"],
    }
    response = {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "decision": {"type": "string", "enum": list(DECISIONS)},
            "fraud": _nullable({"$ref": _REF + "FraudResult"}),
            "credit": _nullable({"$ref": _REF + "CreditResult"}),
            "rules_fired": {"type": "array", "items": {"$ref": _REF + "RuleFired"}},
            "model_versions": {
                "type": "object",
                "properties": {
                    "fraud": {"type": ["string", "null"]},
                    "credit": {"type": ["string", "null"]},
                },
                "required": ["fraud", "credit"],
            },
            "policy_version": {"type": "string"},
            "degraded": {"type": "boolean"},
            "timing_ms": {"type": "number", "minimum": 0},
            "late": {"type": "boolean"},
        },
        "required": [
            "event_id",
            "decision",
            "fraud",
            "credit",
            "rules_fired",
            "model_versions",
            "policy_version",
            "degraded",
            "timing_ms",
            "late",
        ],
    }
    error = {
        "type": "object",
        "properties": {
            "error": {"type": "string", "description": "A short code, e.g. invalid_field."},
            "field": {"type": ["string", "null"], "description": "Dotted path of the field."},
            "message": {"type": "string"},
        },
        "required": ["error", "field", "message"],
        "additionalProperties": False,
    }
    return {
        "ScoreRequest": {
            "oneOf": [{"$ref": _REF + "PaymentEvent"}, {"$ref": _REF + "CreditApplication"}],
            "discriminator": {"propertyName": "event_type", "mapping": mapping},
        },
        "PaymentEvent": payment,
        "CreditApplication": credit,
        "AccountProfile": account,
        "ScoreResponse": response,
        "FraudResult": fraud,
        "CreditResult": credit_result,
        "Reason": reason,
        "RuleFired": rule_fired,
        "Error": error,
    }


__all__ = [
    "ACCOUNT_FIELDS",
    "CREDIT_APPLICATION",
    "CREDIT_FIELDS",
    "LABEL_FIELDS",
    "OPTION_FIELDS",
    "PAYMENT_FIELDS",
    "REQUEST_FIELDS",
    "ApiError",
    "FieldSpec",
    "ScoreRequest",
    "openapi_schemas",
    "parse_json_body",
    "validate_score_request",
]
