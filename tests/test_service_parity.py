"""Parity with training: a simulated period replayed through POST /score, event by event, with
labels sent to POST /feedback at their label_time, gives the offline features and probabilities
exactly."""

from __future__ import annotations

import heapq
import math
import time as pytime
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from conftest import AppFactory

from risk_service import features as fs
from training.simulate import generate_world

WORLD = {"accounts": 250, "days": 35, "seed": 11, "start": date(2026, 3, 1)}
LABELS = {"is_fraud", "label_time", "fraud_scenario"}


def iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(row: dict[str, Any]) -> dict[str, Any]:
    body = {}
    for key, value in row.items():
        if key in LABELS or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        body[key] = iso(value) if key == "timestamp" else value
    return body


def close(a: float | None, b: float) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return math.isnan(b)
    return abs(a - b) <= 1e-9 + 1e-9 * abs(b)


def test_replay_through_score_equals_offline(
    make_app: AppFactory, tmp_path: Path, state_config: dict[str, Any]
) -> None:
    """On every state store: in memory (forgetting idle entities as it goes), and on Redis
    (shared, transactional). Idempotency records live a second here, so most labels arrive
    after their event's record, as chargebacks do after a week's: they find the entities
    from the decision log."""
    world = generate_world(**WORLD)  # type: ignore[arg-type]
    events = world.events.reset_index(drop=True)
    accounts_path = tmp_path / "accounts.parquet"
    world.accounts.to_parquet(accounts_path, index=False)
    app = make_app(ACCOUNTS_FILE=str(accounts_path), IDEMPOTENCY_TTL_SECONDS=1, **state_config)
    client = app.test_client()
    scorer = app.extensions["risk"]

    credit = world.credit.sort_values("timestamp", kind="stable").reset_index(drop=True)
    # (time, order, kind, row): credit applications before events at the same instant
    queue: list[tuple[pd.Timestamp, int, int, str, dict[str, Any]]] = []
    for i, row in enumerate(credit.to_dict(orient="records")):
        queue.append((row["timestamp"], 0, i, "application", row))
    for i, row in enumerate(events.to_dict(orient="records")):
        queue.append((row["timestamp"], 1, i, "event", row))
    queue.sort(key=lambda item: item[:3])
    labels: list[tuple[pd.Timestamp, str]] = []
    past_record = 0  # labels that came after their event's idempotency record expired
    for time, _, _, kind, row in queue:
        while labels and labels[0][0] < time:
            label_time, event_id = heapq.heappop(labels)
            past_record += not _has_record(scorer, event_id)
            chargeback = {"event_id": event_id, "is_fraud": 1, "label_time": iso(label_time)}
            answer = client.post("/feedback", json={**chargeback, "source": "chargeback"})
            assert answer.get_json()["online_state"] == "applied", answer.get_json()
        if kind == "event":
            response = client.post("/score", json=event_body(row))
            assert response.status_code == 200, response.get_json()
            if row["is_fraud"] == 1:
                heapq.heappush(labels, (row["label_time"], row["event_id"]))
        else:
            body = {
                "event_id": row["application_id"],
                "event_type": "credit_application",
                "account_id": row["account_id"],
                "timestamp": iso(row["timestamp"]),
                "requested_limit": row["requested_limit"],
            }
            response = client.post("/score", json=body)
            assert response.status_code == 200, response.get_json()

    assert past_record >= 10, past_record
    store = scorer.engine.store
    if scorer.shared is None:  # in memory: idle entities were forgotten on the way
        assert isinstance(store, fs.MemoryStateStore)
        ips = events["ip_address"].nunique()
        assert store.counts()["ip"][0] < 0.6 * ips, (store.counts(), ips)

    offline = fs.compute_offline_features(events, world.accounts)
    offline_p = scorer.models.fraud.predict_proba(offline.to_numpy())
    log = scorer.log
    mismatches = []
    for i, event_id in enumerate(events["event_id"]):
        record = log.get(event_id)
        for name in fs.FEATURE_NAMES:
            if not close(record.features[name], float(offline.at[i, name])):
                mismatches.append((event_id, name, record.features[name], offline.at[i, name]))
        assert close(record.fraud_probability, float(offline_p[i])), event_id
    assert mismatches == [], mismatches[:10]
    assert len(events) > 3000 and int(events["is_fraud"].sum()) > 10

    offline_credit = fs.compute_offline_credit_features(events, world.accounts, credit)
    credit_model = scorer.models.credit
    offline_pd = credit_model.predict_pd(offline_credit.to_numpy())
    for i, application_id in enumerate(credit["application_id"]):
        record = log.get(application_id)
        for name in fs.CREDIT_FEATURE_NAMES:
            assert close(record.features[name], float(offline_credit.at[i, name])), (
                application_id,
                name,
            )
        assert close(record.credit_pd, float(offline_pd[i]))
    assert len(credit) > 20
    assert np.isfinite(offline_pd).all()


def _has_record(scorer: Any, event_id: str) -> bool:
    """Whether the event's idempotency record is still kept (in memory, or on Redis)."""
    if scorer.shared is not None:
        return scorer.shared.stored_decision(event_id) is not None
    return scorer.idempotency.get(event_id, int(pytime.time() * 1000)) is not None
