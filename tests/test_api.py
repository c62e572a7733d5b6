"""POST /score and the routes around it, through the Flask test client."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import lightgbm as lgb
import pytest
from conftest import AppFactory
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate as validate_openapi

from risk_service import metrics
from risk_service.decision_log import DecisionLogError
from risk_service.idempotency import SettledFilter

NOW = datetime.now(UTC).replace(microsecond=0)


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def payment(event_id: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "timestamp": iso(NOW - timedelta(hours=1)),
        "account_id": "acct-1",
        "event_type": "payment",
        "amount": 42.5,
        "channel": "app",
        "merchant_id": "m-1",
        "merchant_category": "grocery",
        "instrument_id": "tok-1",
        "funding_source": "debit_card",
        "device_id": "dev-1",
        "ip_address": "10.0.0.1",
        "auth_method": "fingerprint",
        "account": {
            "created_at": iso(NOW - timedelta(days=400)),
            "kyc_level": 3,
            "age": 34,
            "monthly_income": 9000.0,
            "credit_limit": 2000.0,
        },
    }
    event.update(fields)
    return event


def policy_file(tmp_path: Path, rules: str, lists: str = "") -> str:
    path = tmp_path / "policy.toml"
    path.write_text(f'version = "test-policy-1"\nfail_mode = "closed"\n{rules}\n{lists}\n')
    return str(path)


def logged(app: Flask, event_id: str) -> Any:
    return app.extensions["risk"].log.get(event_id)


# -- decisions ---------------------------------------------------------------------------------
def test_an_ordinary_payment_is_approved_without_reasons(client: FlaskClient, app: Flask) -> None:
    response = client.post("/score", json=payment("e-approve"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["event_id"] == "e-approve"
    assert body["decision"] == "approve"
    fraud = body["fraud"]
    assert 0 <= fraud["probability"] < 1
    assert 0 <= fraud["score"] <= 99
    assert fraud["band"] in {"low", "medium", "high", "very_high"}
    assert fraud["reasons"] == []
    assert body["credit"] is None
    assert body["degraded"] is False and body["late"] is False
    assert body["model_versions"]["fraud"].startswith("fraud-")
    assert body["policy_version"] == "policy-2026-11-1"
    assert body["timing_ms"] > 0
    assert logged(app, "e-approve").decision == "approve"


def test_explain_gives_an_approval_its_reasons(client: FlaskClient) -> None:
    body = client.post("/score", json=payment("e-explain", explain=True)).get_json()
    assert body["decision"] == "approve"
    reasons = body["fraud"]["reasons"]
    assert 3 <= len(reasons) <= 5
    for reason in reasons:
        assert set(reason) == {"feature", "value", "contribution", "text"}
        assert reason["text"] and isinstance(reason["text"], str)


@pytest.mark.parametrize("action", ["challenge", "review", "decline"])
def test_rules_escalate_with_reasons(make_app: AppFactory, tmp_path: Path, action: str) -> None:
    rules = (
        f'[[rules]]\nname = "big"\nwhen = [["amount", ">", 5000]]\naction = "{action}"\n'
        'reason = "amount over 5,000"\n'
    )
    client = make_app(POLICY_FILE=policy_file(tmp_path, rules)).test_client()
    small = client.post("/score", json=payment("e-small")).get_json()
    assert small["decision"] == "approve" and small["rules_fired"] == []
    body = client.post("/score", json=payment("e-big", amount=7000.0)).get_json()
    assert body["decision"] == action
    assert body["rules_fired"] == [{"name": "big", "action": action, "reason": "amount over 5,000"}]
    assert body["policy_version"] == "test-policy-1"
    assert 3 <= len(body["fraud"]["reasons"]) <= 5


def test_block_list_beats_allow_list_and_allow_beats_rules(
    make_app: AppFactory, tmp_path: Path
) -> None:
    rules = (
        '[[rules]]\nname = "any"\nwhen = [["amount", ">", 0]]\naction = "review"\nreason = "r"\n'
    )
    lists = '[lists.allow]\naccounts = ["vip"]\n[lists.block]\ndevices = ["bad-dev"]\n'
    client = make_app(POLICY_FILE=policy_file(tmp_path, rules, lists)).test_client()
    assert client.post("/score", json=payment("e1")).get_json()["decision"] == "review"
    vip = client.post("/score", json=payment("e2", account_id="vip")).get_json()
    assert vip["decision"] == "approve"
    blocked = payment("e3", account_id="vip", device_id="bad-dev")
    assert client.post("/score", json=blocked).get_json()["decision"] == "decline"


def test_model_thresholds_decide_when_no_rule_fires(app: Flask, client: FlaskClient) -> None:
    fraud = app.extensions["risk"].models.fraud
    fraud.thresholds = {"challenge": 0.0, "review": 0.0, "decline": 0.0}
    body = client.post("/score", json=payment("e-model")).get_json()
    assert body["decision"] == "decline"
    assert body["rules_fired"] == []
    fraud.thresholds = {"challenge": 0.0, "review": 2.0, "decline": 2.0}
    assert client.post("/score", json=payment("e-model2")).get_json()["decision"] == "challenge"


def test_a_model_failure_gives_a_degraded_answer(app: Flask, client: FlaskClient) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("model exploded")

    app.extensions["risk"].models.fraud.forest.predict_proba = broken
    response = client.post("/score", json=payment("e-degraded"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["degraded"] is True
    assert body["fraud"] is None
    assert body["decision"] == "review"  # the default policy fails closed
    assert logged(app, "e-degraded").degraded is True


# -- credit ---------------------------------------------------------------------------------
def test_credit_line_payment_gets_credit_risk_and_limit_check(client: FlaskClient) -> None:
    body = client.post(
        "/score", json=payment("e-credit", funding_source="credit_line", amount=300.0)
    ).get_json()
    credit = body["credit"]
    assert 0 < credit["probability_of_default"] < 1
    assert credit["band"] in {"A", "B", "C", "D", "E"}
    assert credit["limit_check"]["credit_limit"] == 2000.0
    assert credit["limit_check"]["within_limit"] is True
    over = client.post(
        "/score",
        json=payment("e-credit-2", funding_source="credit_line", amount=1900.0),
    ).get_json()
    # 300 already used in the window: 1,900 no longer fits in 2,000
    assert over["credit"]["limit_check"]["used_30d"] == 300.0
    assert over["credit"]["limit_check"]["within_limit"] is False
    assert over["decision"] == "decline"
    assert any(r["name"] == "credit_limit_exceeded" for r in over["rules_fired"])


def test_credit_application_gets_a_credit_decision(client: FlaskClient) -> None:
    request = {
        "event_id": "app-1",
        "event_type": "credit_application",
        "account_id": "acct-9",
        "timestamp": iso(NOW - timedelta(minutes=5)),
        "requested_limit": 3000.0,
        "account": {
            "created_at": iso(NOW - timedelta(days=30)),
            "kyc_level": 1,
            "monthly_income": 2500.0,
            "credit_limit": 0.0,
        },
    }
    body = client.post("/score", json=request).get_json()
    assert body["fraud"] is None
    credit = body["credit"]
    assert body["decision"] in {"approve", "review", "decline"}
    assert 0 < credit["probability_of_default"] < 1
    assert credit["recommended_limit"] <= 3000.0
    assert credit["recommended_limit"] % 10 == 0
    if body["decision"] != "approve":
        assert 3 <= len(credit["reasons"]) <= 5


# -- idempotency and time ----------------------------------------------------------------------
def test_a_retry_returns_the_stored_decision_and_counts_once(
    app: Flask, client: FlaskClient
) -> None:
    first = client.post("/score", json=payment("e-retry")).get_json()
    again = client.post("/score", json=payment("e-retry")).get_json()
    first.pop("timing_ms"), again.pop("timing_ms")
    assert again == first
    later = payment("e-after", timestamp=iso(NOW - timedelta(minutes=30)))
    client.post("/score", json=later)
    features = logged(app, "e-after").features
    assert features["account_events_24h"] == 1  # the retry was not counted again
    assert app.extensions["risk"].log.count() == 2


def test_a_logged_entry_keeps_only_what_a_retry_needs(app: Flask, client: FlaskClient) -> None:
    """Once logged, the in-memory entry lets go of its record and features by name (about a
    quarter of the process's memory at 50,000 entries), and retries still get the same
    answer, with approval reasons when asked, from the features that decided."""
    first = client.post("/score", json=payment("e-slim")).get_json()
    entry = app.extensions["risk"].idempotency._entries["e-slim"]
    assert entry.logged and entry.record is None and entry.features == {}
    assert entry.x is not None and entry.event["event_id"] == "e-slim"
    again = client.post("/score", json=payment("e-slim")).get_json()
    explained = client.post("/score", json=payment("e-slim", explain=True)).get_json()
    for body in (first, again, explained):
        body.pop("timing_ms")
    assert again == first and first["fraud"]["reasons"] == []
    assert 3 <= len(explained["fraud"]["reasons"]) <= 5
    explained["fraud"]["reasons"] = []
    assert explained == first
    assert logged(app, "e-slim").features["amount"] == 42.5  # the log has them


def test_a_retry_past_the_memory_window_is_answered_from_the_log(make_app: AppFactory) -> None:
    """Only the newest IDEMPOTENCY_MEMORY_EVENTS are kept whole: an older event's retry gets
    its answer back from the decision log, still counts once, and a label still finds it."""
    app = make_app(IDEMPOTENCY_MEMORY_EVENTS=2)
    client = app.test_client()
    scorer = app.extensions["risk"]
    t0 = NOW - timedelta(hours=3)
    first = client.post("/score", json=payment("w-0", timestamp=iso(t0))).get_json()
    for i in range(1, 4):
        body = payment(f"w-{i}", timestamp=iso(t0 + timedelta(minutes=i)))
        assert client.post("/score", json=body).status_code == 200
    assert len(scorer.idempotency) == 4 and scorer.idempotency.whole() == 2
    again = client.post("/score", json=payment("w-0", timestamp=iso(t0)))
    assert again.status_code == 200
    replay = again.get_json()
    first.pop("timing_ms"), replay.pop("timing_ms")
    assert replay == first
    other = client.post("/score", json=payment("w-0", timestamp=iso(t0), amount=43.0))
    assert other.status_code == 409 and other.get_json()["field"] == "event_id"
    assert scorer.log.count() == 4
    label_time = iso(t0 + timedelta(minutes=30))
    assert scorer.ingest_label("w-0", 1, label_time) == "applied"
    assert scorer.ingest_label("w-0", 1, label_time) == "duplicate"
    client.post("/score", json=payment("w-later", timestamp=iso(t0 + timedelta(hours=1))))
    features = logged(app, "w-later").features
    assert features["account_events_24h"] == 4  # the retry was not counted again
    assert features["merchant_known_frauds_30d"] == 1
    assert features["account_known_frauds_90d"] == 1


def test_new_events_the_settled_filter_mistakes_are_scored_once(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Bloom filter's false positive (here: every event_id) costs a read of the log, which
    finds nothing: the event is scored as new, once; a real retry is answered from the log."""
    monkeypatch.setattr(SettledFilter, "may_contain", lambda self, event_id: True)
    app = make_app(IDEMPOTENCY_MEMORY_EVENTS=1)
    client = app.test_client()
    name = "risk_idempotency_settled_lookups_total"
    before = {f: metrics.sample(name, {"found": f}) for f in ("new", "retry")}
    t0 = NOW - timedelta(hours=2)
    first = client.post("/score", json=payment("fp-0", timestamp=iso(t0)))
    assert first.status_code == 200 and first.get_json()["event_id"] == "fp-0"
    second = payment("fp-1", timestamp=iso(t0 + timedelta(minutes=5)))
    assert client.post("/score", json=second).status_code == 200
    assert logged(app, "fp-1").features["account_events_24h"] == 1
    again = client.post("/score", json=payment("fp-0", timestamp=iso(t0))).get_json()
    expected = first.get_json()
    again.pop("timing_ms"), expected.pop("timing_ms")
    assert again == expected  # fp-0 is settled now: its answer came from the log
    client.post("/score", json=payment("fp-2", timestamp=iso(t0 + timedelta(minutes=9))))
    assert logged(app, "fp-2").features["account_events_24h"] == 2  # the retry counted once
    assert app.extensions["risk"].log.count() == 3
    looked = {f: metrics.sample(name, {"found": f}) - n for f, n in before.items()}
    assert looked == {"new": 3, "retry": 1}


@pytest.mark.parametrize("recall_seconds", [3600, 0], ids=["recalled", "not-recalled"])
def test_after_a_restart_a_retry_gets_the_answer_given_before(
    make_app: AppFactory, tmp_path: Path, recall_seconds: int
) -> None:
    """The in-memory records and state go with the process; the decision log stays. At start
    the last hour's event ids come back from the log (RESTART_RECALL_SECONDS), so a retry is
    answered from the log and not counted. Past that, it is scored on the empty state
    (counted there once) and still answered what was acknowledged and logged before, not a
    new answer that nobody logged."""
    shared_log = {"DECISION_LOG_PATH": str(tmp_path / "kept.sqlite")}
    t0 = NOW - timedelta(hours=1)
    before = make_app(**shared_log).test_client()
    for i in range(6):  # velocity the first process saw
        body = payment(f"rs-{i}", timestamp=iso(t0 + timedelta(minutes=i)), amount=900.0)
        assert before.post("/score", json=body).status_code == 200
    target = payment("rs-5", timestamp=iso(t0 + timedelta(minutes=5)), amount=900.0)
    first = before.post("/score", json=target).get_json()  # a retry there: the same answer
    restarted = make_app(**shared_log, RESTART_RECALL_SECONDS=recall_seconds)
    client = restarted.test_client()
    retry = client.post("/score", json=target)
    assert retry.status_code == 200
    answer = retry.get_json()
    first.pop("timing_ms"), answer.pop("timing_ms")
    assert answer == first
    assert restarted.extensions["risk"].log.count() == 6
    later = payment("rs-later", timestamp=iso(t0 + timedelta(minutes=20)), amount=900.0)
    assert client.post("/score", json=later).status_code == 200
    counted = logged(restarted, "rs-later").features["account_events_24h"]
    assert counted == (0 if recall_seconds else 1)
    # what the empty state alone would have answered: another probability
    fresh = make_app().test_client().post("/score", json=target).get_json()
    assert fresh["fraud"]["probability"] != first["fraud"]["probability"]


def test_a_filter_hit_with_the_log_unreadable_is_scored_as_new(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cannot tell a settled event from a false positive without the log: the answer is not
    held up (a retry settled out of memory during a log outage would count twice)."""
    monkeypatch.setattr(SettledFilter, "may_contain", lambda self, event_id: True)
    app = make_app()
    scorer = app.extensions["risk"]

    def unreadable(event_id: str) -> None:
        raise DecisionLogError("decision log down (test)")

    monkeypatch.setattr(scorer.log, "get", unreadable)
    answer = app.test_client().post("/score", json=payment("lost-log-0"))
    assert answer.status_code == 200 and answer.get_json()["event_id"] == "lost-log-0"
    assert scorer.log.count() == 1 and scorer.idempotency.whole() == 1


def test_a_settled_approval_gets_the_same_reasons_when_asked(make_app: AppFactory) -> None:
    """`"explain": true` on a retry: from memory while whole, from the logged features once
    settled, the same reasons."""
    app = make_app(IDEMPOTENCY_MEMORY_EVENTS=1)
    client = app.test_client()
    t0 = NOW - timedelta(hours=2)
    body = payment("r-0", timestamp=iso(t0))
    assert client.post("/score", json=body).get_json()["fraud"]["reasons"] == []
    whole = client.post("/score", json={**body, "explain": True}).get_json()
    assert whole["decision"] == "approve" and 3 <= len(whole["fraud"]["reasons"]) <= 5
    client.post("/score", json=payment("r-1", timestamp=iso(t0 + timedelta(minutes=1))))
    scorer = app.extensions["risk"]
    assert scorer.idempotency.whole() == 1  # r-0 is settled now
    settled = client.post("/score", json={**body, "explain": True}).get_json()
    assert settled["fraud"]["reasons"] == whole["fraud"]["reasons"]
    assert client.post("/score", json=body).get_json()["fraud"]["reasons"] == []


def test_same_event_id_with_another_body_is_409(client: FlaskClient) -> None:
    client.post("/score", json=payment("e-dup"))
    response = client.post("/score", json=payment("e-dup", amount=43.0))
    assert response.status_code == 409
    assert response.get_json()["field"] == "event_id"


def test_late_events_are_scored_on_current_state_and_flagged(
    app: Flask, client: FlaskClient
) -> None:
    newest = client.post("/score", json=payment("e-new", timestamp=iso(NOW))).get_json()
    assert newest["late"] is False
    skewed = payment("e-skew", timestamp=iso(NOW - timedelta(minutes=2)))
    assert client.post("/score", json=skewed).get_json()["late"] is False  # within 5 minutes
    old = payment("e-old", timestamp=iso(NOW - timedelta(minutes=40)))
    assert client.post("/score", json=old).get_json()["late"] is True
    follow = payment("e-follow", timestamp=iso(NOW + timedelta(seconds=1)))
    client.post("/score", json=follow)
    assert logged(app, "e-follow").features["account_events_24h"] == 3  # late ones count


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_id": "x"}, "event_type"),
        ({k: v for k, v in payment("x").items() if k != "amount"}, "amount"),
        (payment("x", amount=0), "amount"),
        (payment("x", amount=-3), "amount"),
        (payment("x", amount=1e15), "amount"),
        (payment("x", amount="12"), "amount"),
        (payment("x", amount=True), "amount"),
        (payment("x", event_type="refund"), "event_type"),
        (payment("x", timestamp="yesterday"), "timestamp"),
        (payment("x", timestamp=iso(NOW + timedelta(days=2))), "timestamp"),
        (payment("x", is_fraud=1), "is_fraud"),
        (payment("x", ammount=5), "ammount"),
        (payment("x", account_id=7), "account_id"),
        (payment("x", account={"created_at": "2020-01-01", "kyc_level": 9}), "account.kyc_level"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/score", json=body)
    assert response.status_code == 400
    payload = response.get_json()
    assert set(payload) == {"error", "field", "message"}
    assert payload["field"] == field
    assert payload["message"]


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"amount": NaN}', "application/json", 400),
        (b'{"amount": Infinity}', "application/json", 400),
        (b"event_id=1", "application/x-www-form-urlencoded", 415),
        (b"{}", "text/plain", 415),
        (b'{"a":' * 50 + b"1" + b"}" * 50, "application/json", 400),
        (b'{"pad": "' + b"x" * 70_000 + b'"}', "application/json", 413),
    ],
)
def test_malformed_bodies_get_json_errors(
    client: FlaskClient, data: bytes, content_type: str, status: int
) -> None:
    response = client.post("/score", data=data, content_type=content_type)
    assert response.status_code == status
    assert set(response.get_json()) == {"error", "field", "message"}


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({"Content-Encoding": "gzip"}, 415, "unsupported_media_type"),
        ({"Transfer-Encoding": "gzip, chunked"}, 501, "not_implemented"),
        ({"Content-Encoding": "identity"}, 200, None),
    ],
)
def test_codings_the_service_does_not_decode_are_refused(
    client: FlaskClient, headers: dict[str, str], status: int, error: str | None
) -> None:
    """A coding is refused by name rather than read as it is (a gzip body would be reported
    as malformed JSON; an uncompressed one marked gzip would be scored as if it were)."""
    body = json.dumps(payment("coded")).encode()
    response = client.post("/score", data=body, content_type="application/json", headers=headers)
    assert response.status_code == status
    if error is not None:
        assert response.get_json()["error"] == error and response.get_json()["field"] is None


def test_unknown_routes_and_methods_are_json(client: FlaskClient) -> None:
    assert client.get("/nope").get_json()["error"] == "not_found"
    assert client.get("/score").status_code == 405


# -- around it -------------------------------------------------------------------------------
def test_health_ready_models(client: FlaskClient) -> None:
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["checks"]["fraud_model"] is True
    models = client.get("/models").get_json()["models"]
    assert models["fraud"]["kind"] == "fraud"
    assert len(models["fraud"]["files"]) >= 3


def test_openapi_document_is_valid_and_matches_real_responses(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    validate_openapi(document)
    schemas = document["components"]["schemas"]
    resolver_doc = {"components": {"schemas": schemas}}

    def check(instance: Any, name: str) -> None:
        schema = {**schemas[name], "components": resolver_doc["components"]}
        jsonschema.validate(instance, schema)

    check(client.post("/score", json=payment("o1", explain=True)).get_json(), "ScoreResponse")
    check(
        client.post("/score", json=payment("o2", funding_source="credit_line")).get_json(),
        "ScoreResponse",
    )
    check(client.post("/score", json=payment("o3", amount=-1)).get_json(), "Error")
    check(payment("o4"), "ScoreRequest")
    page = client.get("/docs")
    assert page.status_code == 200 and b"/score" in page.data


def test_prediction_is_single_threaded_on_the_request_path(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenMP trap: LightGBM's default threads inside web workers collapse throughput."""
    seen: list[Any] = []
    original = lgb.Booster.predict

    def spy(self: lgb.Booster, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("num_threads"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lgb.Booster, "predict", spy)
    client.post("/score", json=payment("t1", funding_source="credit_line"))
    body = client.post("/score", json=payment("t2", funding_source="credit_line", explain=True))
    assert body.get_json()["fraud"]["reasons"]
    # scores and TreeSHAP reasons come from the compiled forest: no LightGBM, no OpenMP at all
    # (LightGBM with one thread is the fallback: tests/test_reasons.py)
    assert seen == []


def test_path_reasons_need_no_lightgbm_call(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REASONS_METHOD=path: reasons from the compiled forest, in the same format."""
    seen: list[Any] = []
    original = lgb.Booster.predict

    def spy(self: lgb.Booster, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lgb.Booster, "predict", spy)
    client = make_app(REASONS_METHOD="path").test_client()
    body = client.post("/score", json=payment("pr-1", explain=True)).get_json()
    assert seen == []
    reasons = body["fraud"]["reasons"]
    assert 3 <= len(reasons) <= 5
    assert all(set(r) == {"feature", "value", "contribution", "text"} for r in reasons)
    with pytest.raises(ValueError, match="REASONS_METHOD"):
        make_app(REASONS_METHOD="magic")


def test_the_log_holds_no_identifier_in_the_clear(app: Flask, client: FlaskClient) -> None:
    client.post("/score", json=payment("e-pii", account_id="alice-secret-account"))
    record = logged(app, "e-pii")
    assert "alice-secret-account" not in json.dumps(record.request, default=str)
    path = Path(app.config["DECISION_LOG_PATH"])
    app.extensions["risk"].log.close()
    for candidate in path.parent.glob(path.name + "*"):
        assert b"alice-secret-account" not in candidate.read_bytes()


def test_concurrent_requests_count_exactly_and_retries_count_once(app: Flask) -> None:
    """Threads scoring one account at once: no lost update, no double count, one log row each."""
    from concurrent.futures import ThreadPoolExecutor

    base = NOW - timedelta(hours=2)
    bodies = [
        payment(f"c{i}", timestamp=iso(base + timedelta(seconds=i)), amount=10.0 + i)
        for i in range(40)
    ]

    def send(body: dict[str, Any]) -> int:
        return app.test_client().post("/score", json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        # every event twice, at the same time: impatient clients retrying
        codes = list(pool.map(send, bodies + bodies))
    assert codes == [200] * 80
    scorer = app.extensions["risk"]
    assert scorer.log.count() == 40
    follow = payment("c-final", timestamp=iso(base + timedelta(minutes=5)))
    app.test_client().post("/score", json=follow)
    assert logged(app, "c-final").features["account_events_24h"] == 40


def test_a_store_failure_gives_a_degraded_answer_with_rules(
    make_app: AppFactory, tmp_path: Path
) -> None:
    rules = (
        '[[rules]]\nname = "big"\nwhen = [["amount", ">", 5000]]\naction = "decline"\n'
        'reason = "amount over 5,000"\n'
    )
    app = make_app(POLICY_FILE=policy_file(tmp_path, rules))

    def down(event: Any) -> Any:
        raise ConnectionError("state store unreachable")

    app.extensions["risk"].engine.process = down
    client = app.test_client()
    small = client.post("/score", json=payment("d1")).get_json()
    assert small["degraded"] is True and small["decision"] == "review"  # fail closed
    big = client.post("/score", json=payment("d2", amount=9000.0)).get_json()
    assert big["degraded"] is True and big["decision"] == "decline"
    assert big["rules_fired"][0]["name"] == "big"


def test_nul_in_an_id_is_refused(client: FlaskClient) -> None:
    """Found by bench/attacks.py: a NUL in an id was accepted, then PostgreSQL refused it."""
    nul = client.post("/score", json=payment("nul\x00byte"))
    assert nul.status_code == 400 and nul.get_json()["field"] == "event_id"
