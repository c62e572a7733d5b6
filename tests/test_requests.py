"""Request parsing and validation: every bad input names its field; the schemas agree with it."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_service import schema
from risk_service.errors import ApiError
from risk_service.requests import (
    ACCOUNT_FIELDS,
    CREDIT_FIELDS,
    PAYMENT_FIELDS,
    ScoreRequest,
    openapi_schemas,
    parse_json_body,
    validate_score_request,
)
from risk_service.scores import DECISIONS
from risk_service.timeutil import to_millis

NOW = to_millis("2026-11-25T13:00:00Z")
JSON = "application/json"


def payment(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "e000000001",
        "timestamp": "2026-11-25T12:59:00Z",
        "account_id": "account000123",
        "event_type": "payment",
        "amount": 123.45,
        "currency": "CNY",
        "channel": "app",
        "merchant_id": "merchant00042",
        "merchant_category": "grocery",
        "instrument_id": "instrument000777",
        "funding_source": "debit_card",
        "device_id": "device000555",
        "ip_address": "10.1.2.3",
        "latitude": 31.23,
        "longitude": 121.47,
        "auth_method": "fingerprint",
    }
    body.update(changes)
    return body


def credit(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "c1",
        "event_type": "credit_application",
        "account_id": "account000123",
        "timestamp": "2026-11-25T12:00:00",
        "requested_limit": 5000,
    }
    body.update(changes)
    return body


ACCOUNT = {
    "created_at": "2024-03-01T08:00:00+08:00",
    "kyc_level": 2,
    "age": 34,
    "monthly_income": 8000.0,
    "home_latitude": 31.2,
    "home_longitude": 121.4,
    "credit_limit": 5000,
}


def validate(body: Any) -> ScoreRequest:
    return validate_score_request(body, now_ms=NOW)


def refused(body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        validate(body)
    err = info.value
    assert err.to_payload() == {"error": err.error, "field": err.field, "message": err.message}
    return err


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


# ------------------------------------------------------------------ happy paths
def test_payment_is_validated_into_canonical_fields() -> None:
    req = validate(payment())
    assert req.kind == "payment"
    assert req.event["amount"] == 123.45
    assert req.event["timestamp"] == "2026-11-25T12:59:00Z"
    assert req.event["timestamp_ms"] == to_millis("2026-11-25T12:59:00Z") == req.timestamp_ms
    assert req.event_id == "e000000001"
    assert req.account is None and req.explain is False
    assert set(req.event) == {*payment(), "timestamp_ms"}


def test_minimal_payment_and_nulls_mean_absent() -> None:
    body = {k: payment()[k] for k in ("event_id", "timestamp", "account_id", "event_type")}
    body.update(amount=7, channel=None, latitude=None)
    req = validate(body)
    assert req.event["amount"] == 7.0 and isinstance(req.event["amount"], float)
    assert "channel" not in req.event and "latitude" not in req.event


def test_timestamps_are_normalised_to_utc() -> None:
    req = validate(payment(timestamp="2026-11-25T20:59:00.250+08:00"))
    assert req.event["timestamp"] == "2026-11-25T12:59:00.250000Z"
    assert req.timestamp_ms == to_millis("2026-11-25T12:59:00.250Z")
    naive = validate(payment(timestamp="2026-11-25T12:59:00"))
    assert naive.event["timestamp"] == "2026-11-25T12:59:00Z"


@pytest.mark.parametrize("text", ["2026-11-25T12:59:00Z\x00", "2026-11-25T12:59:00Z\n"])
def test_a_timestamp_with_a_control_character_is_refused(text: str) -> None:
    """The date parser passes over a trailing NUL or line break; the validator does not."""
    assert refused(payment(timestamp=text)).field == "timestamp"
    with_account = payment(account={**ACCOUNT, "created_at": text})
    assert refused(with_account).field == "account.created_at"


def test_credit_application_defaults_application_id_to_event_id() -> None:
    req = validate(credit(account={**ACCOUNT, "account_id": "account000123"}, explain=True))
    assert req.kind == "credit_application"
    assert req.event["application_id"] == "c1"
    assert req.event["requested_limit"] == 5000.0
    assert req.explain is True
    assert req.account is not None
    assert req.account["created_at"] == "2024-03-01T00:00:00Z"
    assert req.account["kyc_level"] == 2
    given = validate(credit(application_id="app-9", application_type="limit_review"))
    assert given.event["application_id"] == "app-9"


def test_inline_account_gets_the_event_account_id() -> None:
    req = validate(payment(account=dict(ACCOUNT, kyc_level=3.0)))
    assert req.account is not None
    assert req.account["account_id"] == "account000123"
    assert req.account["kyc_level"] == 3 and type(req.account["kyc_level"]) is int


def test_identifiers_are_kept_exactly() -> None:
    req = validate(payment(account_id=" Account-1 ", device_id="x" * 128))
    assert req.event["account_id"] == " Account-1 "


# ------------------------------------------------------------------ body hash
def test_body_hash_ignores_key_order_and_spelling_but_not_content() -> None:
    a = validate(payment())
    shuffled = dict(reversed(list(payment().items())))
    assert validate(shuffled).canonical_body_hash == a.canonical_body_hash
    assert validate(payment(amount=123.450)).canonical_body_hash == a.canonical_body_hash
    same_instant = payment(timestamp="2026-11-25T20:59:00+08:00")
    assert validate(same_instant).canonical_body_hash == a.canonical_body_hash
    assert validate(payment(explain=True)).canonical_body_hash == a.canonical_body_hash
    assert validate(payment(amount=123.46)).canonical_body_hash != a.canonical_body_hash
    assert validate(payment(device_id="other")).canonical_body_hash != a.canonical_body_hash
    with_account = validate(payment(account=ACCOUNT))
    assert with_account.canonical_body_hash != a.canonical_body_hash
    reordered_account = dict(reversed(list(ACCOUNT.items())))
    assert (
        validate(payment(account=reordered_account)).canonical_body_hash
        == with_account.canonical_body_hash
    )


# ------------------------------------------------------------------ bad input, field by field
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("not-an-object", {}, "", "not_an_object"),
    ("missing event_type", without(payment(), "event_type"), "event_type", "missing_field"),
    ("unknown event_type", payment(event_type="refund"), "event_type", "invalid_field"),
    ("event_type number", payment(event_type=3), "event_type", "invalid_field"),
    ("missing event_id", without(payment(), "event_id"), "event_id", "missing_field"),
    ("null event_id", payment(event_id=None), "event_id", "missing_field"),
    ("missing account_id", without(payment(), "account_id"), "account_id", "missing_field"),
    ("missing amount", without(payment(), "amount"), "amount", "missing_field"),
    ("missing timestamp", without(payment(), "timestamp"), "timestamp", "missing_field"),
    ("amount zero", payment(amount=0), "amount", "invalid_field"),
    ("amount negative", payment(amount=-5.0), "amount", "invalid_field"),
    ("amount NaN", payment(amount=float("nan")), "amount", "invalid_field"),
    ("amount Infinity", payment(amount=float("inf")), "amount", "invalid_field"),
    ("amount -Infinity", payment(amount=float("-inf")), "amount", "invalid_field"),
    ("amount huge", payment(amount=1e12), "amount", "invalid_field"),
    ("amount huge int", payment(amount=10**400), "amount", "invalid_field"),
    ("amount bool", payment(amount=True), "amount", "invalid_field"),
    ("amount string", payment(amount="12.50"), "amount", "invalid_field"),
    ("amount 3 decimals", payment(amount=1.005), "amount", "invalid_field"),
    ("timestamp future", payment(timestamp="2026-11-25T13:06:00Z"), "timestamp", "invalid_field"),
    ("timestamp unparseable", payment(timestamp="25/11/2026"), "timestamp", "invalid_field"),
    ("timestamp number", payment(timestamp=1795611540000), "timestamp", "invalid_field"),
    ("timestamp overflow", payment(timestamp="0001-01-01T00:00:00+01:00"), "timestamp",
     "invalid_field"),
    ("timestamp before 1970", payment(timestamp="1969-12-31T23:59:59Z"), "timestamp",
     "invalid_field"),
    ("empty id", payment(device_id=""), "device_id", "invalid_field"),
    ("long id", payment(merchant_id="m" * 129), "merchant_id", "invalid_field"),
    ("id number", payment(account_id=123), "account_id", "invalid_field"),
    ("bad channel", payment(channel="fax"), "channel", "invalid_field"),
    ("bad funding", payment(funding_source="cash"), "funding_source", "invalid_field"),
    ("bad auth", payment(auth_method="retina"), "auth_method", "invalid_field"),
    ("bad category", payment(merchant_category="weapons"), "merchant_category", "invalid_field"),
    ("bad currency", payment(currency="yuan"), "currency", "invalid_field"),
    ("latitude range", payment(latitude=90.5), "latitude", "invalid_field"),
    ("longitude range", payment(longitude=-181), "longitude", "invalid_field"),
    ("latitude string", payment(latitude="31.2"), "latitude", "invalid_field"),
    ("label is_fraud", payment(is_fraud=0), "is_fraud", "label_field"),
    ("label label_time", payment(label_time="2026-12-01"), "label_time", "label_field"),
    ("label scenario", payment(fraud_scenario="mule"), "fraud_scenario", "label_field"),
    ("label defaulted", credit(defaulted=1), "defaulted", "label_field"),
    ("unknown field", payment(ammount=5), "ammount", "unknown_field"),
    ("credit field on payment", payment(requested_limit=5), "requested_limit", "unknown_field"),
    ("payment field on credit", credit(device_id="d"), "device_id", "unknown_field"),
    ("credit limit zero", credit(requested_limit=0), "requested_limit", "invalid_field"),
    ("credit limit missing", without(credit(), "requested_limit"), "requested_limit",
     "missing_field"),
    ("credit bad type", credit(application_type="upgrade"), "application_type", "invalid_field"),
    ("explain string", payment(explain="yes"), "explain", "invalid_field"),
    ("account not object", payment(account=[1]), "account", "invalid_field"),
    ("account kyc", payment(account=dict(ACCOUNT, kyc_level=4)), "account.kyc_level",
     "invalid_field"),
    ("account kyc bool", payment(account=dict(ACCOUNT, kyc_level=True)), "account.kyc_level",
     "invalid_field"),
    ("account created_at", payment(account=dict(ACCOUNT, created_at="soon")),
     "account.created_at", "invalid_field"),
    ("account created_at missing", payment(account=without(ACCOUNT, "created_at")),
     "account.created_at", "missing_field"),
    ("account age", payment(account=dict(ACCOUNT, age=30.5)), "account.age", "invalid_field"),
    ("account income", payment(account=dict(ACCOUNT, monthly_income=-1)),
     "account.monthly_income", "invalid_field"),
    ("account credit limit", payment(account=dict(ACCOUNT, credit_limit=-0.01)),
     "account.credit_limit", "invalid_field"),
    ("account home lat", payment(account=dict(ACCOUNT, home_latitude=-91)),
     "account.home_latitude", "invalid_field"),
    ("account other id", payment(account=dict(ACCOUNT, account_id="someone-else")),
     "account.account_id", "invalid_field"),
    ("account unknown", payment(account=dict(ACCOUNT, nickname="x")), "account.nickname",
     "unknown_field"),
    ("account label", payment(account=dict(ACCOUNT, is_fraud=1)), "account.is_fraud",
     "label_field"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field", "error"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_400_naming_the_field(body: dict[str, Any], field: str, error: str) -> None:
    err = refused(body if body else [body])
    assert err.status == 400
    assert err.error == error
    assert err.field == (field or None)
    assert err.message


def test_unknown_field_is_reported_before_the_missing_one_it_misspells() -> None:
    body = without(payment(), "amount")
    body["ammount"] = 5
    assert refused(body).field == "ammount"


def test_future_limit_is_configurable() -> None:
    body = payment(timestamp="2026-11-25T14:00:00Z")
    with pytest.raises(ApiError):
        validate_score_request(body, now_ms=NOW)
    req = validate_score_request(body, now_ms=NOW, max_future_ms=2 * 3_600_000)
    assert req.event["timestamp"] == "2026-11-25T14:00:00Z"
    with pytest.raises(ApiError) as info:
        validate_score_request(payment(amount=501), now_ms=NOW, max_amount=500)
    assert info.value.field == "amount"


def test_python_json_nan_literals_are_refused() -> None:
    body = json.loads('{"amount": NaN}')
    err = refused(payment(amount=body["amount"]))
    assert err.field == "amount"


def test_lone_surrogates_from_a_lenient_decoder_are_refused() -> None:
    body = json.loads('{"device_id": "\\ud800"}')
    assert refused(payment(**body)).field == "device_id"
    assert refused(payment(merchant_id="ok\udfff")).field == "merchant_id"


def test_validation_does_not_mutate_the_body() -> None:
    body = payment(account=dict(ACCOUNT))
    before = copy.deepcopy(body)
    validate(body)
    assert body == before


# ------------------------------------------------------------------ parse_json_body
def parse(raw: bytes, ct: str | None = JSON, max_bytes: int = 4096, depth: int = 8) -> Any:
    return parse_json_body(raw, ct, max_bytes, depth)


@pytest.mark.parametrize(
    ("raw", "ct", "status", "error"),
    [
        (b'{"a": 1', JSON, 400, "malformed_json"),
        (b"", JSON, 400, "malformed_json"),
        (b'{"amount": NaN}', JSON, 400, "malformed_json"),
        (b'{"amount": Infinity}', JSON, 400, "malformed_json"),
        (b'{"a": "\xff"}', JSON, 400, "malformed_json"),
        (b"[1, 2]", JSON, 400, "not_an_object"),
        (b'"text"', JSON, 400, "not_an_object"),
        (b"null", JSON, 400, "not_an_object"),
        (b'{"a": ' * 9 + b"1" + b"}" * 9, JSON, 400, "too_deep"),
        (b'{"a": [' * 5000 + b"]}" * 5000, JSON, 400, "malformed_json"),  # orjson's own limit
        (b'{"a": "' + b"x" * 100_000 + b'"}', JSON, 413, "payload_too_large"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"{}", None, 415, "unsupported_media_type"),
        (b"{}", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{}", "application/json; charset=latin-1", 415, "unsupported_media_type"),
    ],
)
def test_transport_errors(raw: bytes, ct: str | None, status: int, error: str) -> None:
    with pytest.raises(ApiError) as info:
        parse(raw, ct, max_bytes=100_000)
    assert (info.value.status, info.value.error, info.value.field) == (status, error, None)


def test_deep_nesting_within_orjson_limit_is_refused_without_recursion() -> None:
    raw = b'{"a": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(ApiError) as info:
        parse(raw, max_bytes=10_000, depth=32)
    assert info.value.error == "too_deep"


@pytest.mark.parametrize(
    "ct", [JSON, "application/json; charset=utf-8", "Application/JSON", "application/vnd.a+json"]
)
def test_json_content_types_are_accepted(ct: str) -> None:
    body = parse(orjson.dumps(payment(account=ACCOUNT)), ct, depth=2)
    assert validate(body).event["event_id"] == "e000000001"


# ------------------------------------------------------------------ schemas agree
def _props(name: str) -> dict[str, Any]:
    return openapi_schemas()[name]["properties"]


def _enum_values(prop: dict[str, Any]) -> list[Any]:
    return [v for v in prop["enum"] if v is not None]


def test_schema_enums_are_the_validated_enums() -> None:
    props = _props("PaymentEvent")
    for col in schema.EVENT_COLUMNS:
        if col.allowed is None or col.label:
            continue
        assert _enum_values(props[col.name]) == list(col.allowed)
        for value in col.allowed:  # every schema value validates ...
            if col.name != "event_type":
                validate(payment(**{col.name: value}))
        with pytest.raises(ApiError) as info:  # ... and a value outside it does not
            validate(payment(**{col.name: "not-a-value"}))
        assert info.value.field == col.name
    assert _enum_values(_props("AccountProfile")["kyc_level"]) == list(schema.KYC_LEVELS)
    assert _enum_values(_props("CreditApplication")["event_type"]) == ["credit_application"]
    response = _props("ScoreResponse")
    assert response["decision"]["enum"] == list(DECISIONS)


def test_schema_fields_required_and_closed_match_the_validator() -> None:
    schemas = openapi_schemas()
    for name, specs in (
        ("PaymentEvent", PAYMENT_FIELDS),
        ("CreditApplication", CREDIT_FIELDS),
        ("AccountProfile", ACCOUNT_FIELDS),
    ):
        s = schemas[name]
        assert s["additionalProperties"] is False
        assert set(s["required"]) == {f.name for f in specs if f.required}
        assert {f.name for f in specs} <= set(s["properties"])
        assert not set(s["properties"]) & (schema.LABEL_COLUMNS | schema.CREDIT_LABEL_COLUMNS)
    for event_type in schema.EVENT_TYPES:
        assert schemas["ScoreRequest"]["discriminator"]["mapping"][event_type].endswith(
            "/PaymentEvent"
        )
    amount = schemas["PaymentEvent"]["properties"]["amount"]
    assert amount["exclusiveMinimum"] == 0 and amount["maximum"] == 1e9
    assert openapi_schemas(max_amount=500)["PaymentEvent"]["properties"]["amount"]["maximum"] == 500


def test_every_required_schema_field_is_enforced() -> None:
    for name, specs, body in (
        ("PaymentEvent", PAYMENT_FIELDS, payment()),
        ("CreditApplication", CREDIT_FIELDS, credit()),
    ):
        for field in openapi_schemas()[name]["required"]:
            err = refused(without(body, field))
            assert err.field == field, name
        assert specs


def test_schemas_serialise_as_json() -> None:
    assert json.loads(orjson.dumps(openapi_schemas()))["Error"]["required"] == [
        "error",
        "field",
        "message",
    ]


# ------------------------------------------------------------------ anything a client can send
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_field_names = st.sampled_from(
    sorted({f.name for f in (*PAYMENT_FIELDS, *CREDIT_FIELDS)} | {"account", "explain", "x"})
)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from([payment(), credit(), payment(account=ACCOUNT)]),
    changes=st.dictionaries(_field_names, _json_values, max_size=4),
)
def test_any_json_value_in_any_field_is_accepted_or_a_400(
    base: dict[str, Any], changes: dict[str, Any]
) -> None:
    try:
        validate({**base, **changes})
    except ApiError as err:
        assert err.status == 400 and err.field is not None


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | _json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_parse_or_give_a_4xx(raw: bytes) -> None:
    try:
        parse(raw)
    except ApiError as err:
        assert 400 <= err.status < 500
