"""The in-memory state across a graceful restart (risk_service/snapshot.py)."""

from __future__ import annotations

import logging
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import AppFactory
from flask.testing import FlaskClient
from test_api import NOW, iso, logged, payment

from risk_service.service import save_snapshot


def score_history(client: FlaskClient, n: int, t0: datetime) -> None:
    for i in range(n):
        body = payment(f"h-{i}", timestamp=iso(t0 + timedelta(minutes=i)), merchant_id="m-s")
        assert client.post("/score", json=body).status_code == 200


def test_a_graceful_stop_keeps_the_state_for_the_next_start(
    make_app: AppFactory, tmp_path: Path
) -> None:
    kept = {"DECISION_LOG_PATH": str(tmp_path / "kept.sqlite")}
    t0 = NOW - timedelta(hours=2)
    before = make_app(**kept)
    client = before.test_client()
    score_history(client, 4, t0)
    label = {"event_id": "h-0", "is_fraud": 1, "label_time": iso(t0 + timedelta(minutes=30))}
    first = client.post("/feedback", json={**label, "source": "chargeback"}).get_json()
    assert first["online_state"] == "applied"
    assert save_snapshot(before) > 0
    state_file = tmp_path / "state.snapshot"  # "auto": beside the decision log
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    after = make_app(**kept)
    assert not state_file.exists()  # read once: a later start cannot bring it back
    client = after.test_client()
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)), merchant_id="m-s")
    assert client.post("/score", json=later).status_code == 200
    features = logged(after, "h-later").features
    assert features["account_events_24h"] == 4  # every velocity kept across the restart
    assert features["merchant_known_frauds_30d"] == 1
    again = client.post("/feedback", json={**label, "source": "chargeback"}).get_json()
    assert again["online_state"] == "duplicate"  # applied once, across the restart too


def test_without_a_snapshot_the_start_is_empty(make_app: AppFactory, tmp_path: Path) -> None:
    kept = {"DECISION_LOG_PATH": str(tmp_path / "kept.sqlite")}
    t0 = NOW - timedelta(hours=2)
    score_history(make_app(**kept).test_client(), 4, t0)  # then a crash: nothing written
    after = make_app(**kept)
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)), merchant_id="m-s")
    assert after.test_client().post("/score", json=later).status_code == 200
    assert logged(after, "h-later").features["account_events_24h"] == 0


@pytest.mark.parametrize("spoiled", ["other key", "garbage"])
def test_a_snapshot_of_another_key_or_a_broken_one_is_refused(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, spoiled: str
) -> None:
    state_file = tmp_path / "shared.snapshot"
    t0 = NOW - timedelta(hours=2)
    before = make_app(STATE_SNAPSHOT_PATH=str(state_file))
    score_history(before.test_client(), 4, t0)
    assert save_snapshot(before) > 0
    config = {"STATE_SNAPSHOT_PATH": str(state_file)}
    if spoiled == "other key":
        config["HASH_KEY"] = "another-key-" + "y" * 32
    else:
        state_file.write_bytes(state_file.read_bytes()[:1000])  # cut short
    with caplog.at_level(logging.WARNING, logger="risk_service.snapshot"):
        after = make_app(**config)
    assert "starting empty" in caplog.text
    assert not state_file.exists()
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)), merchant_id="m-s")
    assert after.test_client().post("/score", json=later).status_code == 200
    assert logged(after, "h-later").features["account_events_24h"] == 0
