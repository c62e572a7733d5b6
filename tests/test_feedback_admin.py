"""POST /feedback, GET /decisions/<id>, and the admin routes (promote, challenger, rollback)."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, AppFactory
from flask.testing import FlaskClient
from test_api import NOW, iso, payment
from test_lifecycle import clone_fraud


def label(event_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": event_id,
        "is_fraud": 1,
        "label_time": iso(NOW - timedelta(hours=1)),
        "source": "chargeback",
    }
    body.update(fields)
    return body


def test_feedback_reaches_the_log_and_the_online_state_once(
    make_app: AppFactory, state_config: dict[str, Any]
) -> None:
    client = make_app(**state_config).test_client()
    t0 = NOW - timedelta(days=1)
    for i in range(2):
        body = payment(f"f{i}", timestamp=iso(t0 + timedelta(minutes=i)), merchant_id="m-77")
        assert client.post("/score", json=body).status_code == 200
    first = client.post("/feedback", json=label("f0"))
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["online_state"] == "applied"
    assert first.get_json()["label_time"] == iso(NOW - timedelta(hours=1)).replace("Z", ".000Z")
    again = client.post("/feedback", json=label("f0"))
    assert again.status_code == 200 and again.get_json()["online_state"] == "duplicate"
    not_fraud = client.post("/feedback", json=label("f1", is_fraud=0, source="analyst"))
    assert not_fraud.get_json()["online_state"] == "ignored"
    later = payment("f-later", timestamp=iso(NOW - timedelta(minutes=30)), merchant_id="m-77")
    client.post("/score", json=later)
    features = client.get("/decisions/f-later").get_json()["features"]
    assert features["merchant_known_frauds_30d"] == 1
    assert features["account_known_frauds_90d"] == 1
    labels = client.get("/decisions/f0").get_json()["labels"]
    assert [(x["label"], x["value"], x["source"]) for x in labels] == [
        ("is_fraud", 1, "chargeback")
    ]  # the redelivery was not stored twice


def test_a_chargeback_past_the_idempotency_records_still_reaches_the_online_state(
    make_app: AppFactory, state_config: dict[str, Any]
) -> None:
    """Chargebacks come weeks after the payment, idempotency records live a week: the label
    finds the event's entities from the decision log's hashes, in memory as on Redis, once."""
    scorer_app = make_app(IDEMPOTENCY_TTL_SECONDS=1, **state_config)
    client = scorer_app.test_client()
    t0 = NOW - timedelta(days=2)
    entities = {"merchant_id": "m-old", "device_id": "d-old", "account_id": "a-old"}
    body = payment("old-0", timestamp=iso(t0), **entities)
    assert client.post("/score", json=body).status_code == 200
    time.sleep(1.2)  # the event's idempotency record expires
    scorer = scorer_app.extensions["risk"]
    if scorer.shared is None:
        assert scorer.idempotency.get("old-0", int(time.time() * 1000)) is None
    else:
        assert scorer.shared.stored_decision("old-0") is None
    chargeback = label("old-0", label_time=iso(t0 + timedelta(hours=12)))
    first = client.post("/feedback", json=chargeback)
    assert first.status_code == 200 and first.get_json()["online_state"] == "applied"
    again = client.post("/feedback", json=chargeback)
    assert again.get_json()["online_state"] == "duplicate"
    for i, same in enumerate((entities, {"merchant_id": "m-other", "account_id": "a-other"})):
        later = payment(f"old-later-{i}", timestamp=iso(t0 + timedelta(days=1)), **same)
        assert client.post("/score", json=later).status_code == 200
    seen = client.get("/decisions/old-later-0").get_json()["features"]
    assert seen["merchant_known_frauds_30d"] == 1
    assert seen["device_known_frauds_30d"] == 1
    assert seen["account_known_frauds_90d"] == 1
    assert seen["account_events_24h"] == 0  # the payment a day before is out of that window
    assert seen["account_events_7d"] == 1
    other = client.get("/decisions/old-later-1").get_json()["features"]
    assert other["merchant_known_frauds_30d"] == 0 and other["account_known_frauds_90d"] == 0


def test_a_decision_reads_back_with_features_reasons_and_versions(client: FlaskClient) -> None:
    body = payment("d-1", amount=4000.0, device_id="brand-new-device")
    answer = client.post("/score", json=body).get_json()
    logged = client.get("/decisions/d-1")
    assert logged.status_code == 200
    record = logged.get_json()
    assert record["decision"] == answer["decision"] == "challenge"
    assert record["rules_fired"][0]["name"] == "new_device_large_amount"
    assert record["features"]["amount"] == 4000.0
    assert record["features"]["is_new_device_for_account"] == 1.0
    assert record["reasons"] == answer["fraud"]["reasons"] and len(record["reasons"]) >= 3
    assert record["model_versions"] == answer["model_versions"]
    assert record["policy_version"] == answer["policy_version"]
    assert record["request"]["event"]["device_id"] != "brand-new-device"  # keyed hash
    assert record["shadow"] is None and record["labels"] == []
    missing = client.get("/decisions/nope")
    assert missing.status_code == 404 and missing.get_json()["field"] == "event_id"


def test_an_event_id_with_a_slash_reads_back(client: FlaskClient) -> None:
    """Event ids are free text (a merchant's "order/123"): the route takes the rest of the
    path, encoded or not, rather than answering "no such route"."""
    answer = client.post("/score", json=payment("order/123")).get_json()
    for path in ("/decisions/order/123", "/decisions/order%2F123"):
        logged = client.get(path)
        assert logged.status_code == 200, path
        assert logged.get_json()["event_id"] == "order/123"
        assert logged.get_json()["decision"] == answer["decision"]
    missing = client.get("/decisions/order/124")
    assert missing.status_code == 404 and missing.get_json()["field"] == "event_id"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (label("unknown-event"), 404, "event_id"),
        (label("fb\x00"), 400, "event_id"),  # the same id rule as /score
        (label("x" * 129), 400, "event_id"),
        ({**label("fb"), "defaulted": 1}, 400, "defaulted"),
        ({k: v for k, v in label("fb").items() if k != "is_fraud"}, 400, "is_fraud"),
        (label("fb", is_fraud=2), 400, "is_fraud"),
        (label("fb", source="rumour"), 400, "source"),
        (label("fb", label_time="last tuesday"), 400, "label_time"),
        (label("fb", label_time=iso(NOW + timedelta(days=1))), 400, "label_time"),
        (label("fb", label_time=iso(NOW - timedelta(days=30))), 400, "label_time"),
        ({**label("fb"), "amount": 3}, 400, "amount"),
        ({k: v for k, v in label("fb").items() if k != "source"}, 400, "source"),
    ],
)
def test_bad_feedback_is_a_4xx_naming_the_field(
    client: FlaskClient, body: dict[str, Any], status: int, field: str
) -> None:
    client.post("/score", json=payment("fb"))
    response = client.post("/feedback", json=body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["field"] == field


def test_a_default_label_is_stored_for_training_only(client: FlaskClient) -> None:
    client.post("/score", json=payment("cr-1", funding_source="credit_line", amount=50.0))
    response = client.post(
        "/feedback", json={**label("cr-1", source="collections"), "is_fraud": None, "defaulted": 1}
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["online_state"] == "ignored"
    labels = client.get("/decisions/cr-1").get_json()["labels"]
    assert [(x["label"], x["value"]) for x in labels] == [("defaulted", 1)]


# -- admin: challenger in shadow, promotion, rollback ------------------------------------------
@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(MODELS, target, ignore=shutil.ignore_patterns("audit.jsonl"))
    return target


def test_a_challenger_runs_in_shadow_then_is_promoted_and_rolled_back(
    make_app: AppFactory, models_copy: Path
) -> None:
    app = make_app(MODELS_DIR=str(models_copy))
    client = app.test_client()
    champion = client.post("/score", json=payment("s-0")).get_json()
    challenger = clone_fraud(models_copy, "challenger")

    named = client.post("/admin/challenger", json={"kind": "fraud", "version": challenger})
    assert named.status_code == 200, named.get_json()
    assert named.get_json()["swapped_here"] is True
    shadowed = client.post("/score", json=payment("s-1")).get_json()
    assert shadowed["model_versions"] == champion["model_versions"]  # the champion decides
    shadow = client.get("/decisions/s-1").get_json()["shadow"]
    assert shadow["model_versions"]["fraud"] == challenger
    assert shadow["challengers"] == {"fraud": challenger}
    assert shadow["fraud_probability"] == pytest.approx(shadowed["fraud"]["probability"])
    assert shadow["decision"] == shadowed["decision"]

    promoted = client.post("/admin/promote", json={"kind": "fraud", "version": challenger})
    assert promoted.status_code == 200, promoted.get_json()
    after = client.post("/score", json=payment("s-2")).get_json()
    assert after["model_versions"]["fraud"] == challenger
    back = client.post("/admin/rollback", json={"kind": "fraud"})
    assert back.status_code == 200
    assert (
        client.post("/score", json=payment("s-3")).get_json()["model_versions"]
        == (champion["model_versions"])
    )
    status = client.get("/admin/status").get_json()
    actions = [entry["action"] for entry in status["recent_audit"]]
    assert actions[-3:] == ["shadow", "promote", "rollback"]
    assert status["recent_audit"][-1]["actor"].startswith("loopback:")


def test_a_tampered_version_is_refused_over_http_and_the_champion_keeps_serving(
    make_app: AppFactory, models_copy: Path
) -> None:
    app = make_app(MODELS_DIR=str(models_copy))
    client = app.test_client()
    before = client.post("/score", json=payment("x-0")).get_json()["model_versions"]
    bad = clone_fraud(models_copy, "tampered")
    model_file = next((models_copy / "fraud" / bad).glob("*.txt"))
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 1
    model_file.write_bytes(bytes(data))
    refused = client.post("/admin/promote", json={"kind": "fraud", "version": bad})
    assert refused.status_code == 409
    assert (
        refused.get_json()["error"] == "refused" and "sha" in refused.get_json()["message"].lower()
    )
    assert client.post("/score", json=payment("x-1")).get_json()["model_versions"] == before
    wrong = client.post("/admin/promote", json={"kind": "dog", "version": bad})
    assert wrong.status_code == 400 and wrong.get_json()["field"] == "kind"
