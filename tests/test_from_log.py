"""`risk train --from-log`: outcomes as known at the cut-off, the selection-bias report, and the
fraud model trained end to end from a log filled by scoring a simulated world (SQLite here,
PostgreSQL in the integration test)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flask import Flask

from risk_service import create_app
from risk_service import features as fs
from risk_service.bundles import Registry, verify_bundle
from risk_service.decision_log import DecisionLog, DecisionRecord, SQLiteDecisionLog
from risk_service.fraud_model import FraudModel
from risk_service.labels import LabelRecord
from risk_service.requests import validate_score_request
from training.cli import main
from training.datasets import DataError
from training.from_log import MIN_LABELLED, known_outcomes, run_training_from_log
from training.log_source import read_log
from training.simulate import World, generate_world

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-" + "x" * 32
WORLD = {"accounts": 150, "days": 100, "seed": 5, "start": date(2026, 5, 1), "fraud_rate": 0.03}
CUTOFF = "2026-11-01T00:00:00Z"
LABELS = {"is_fraud", "label_time", "fraud_scenario"}


def ms(text: str) -> int:
    return int(pd.Timestamp(text).value // 1_000_000)


# -- outcomes as known at the cut-off, on a handmade log ----------------------------------------
def decision(event_id: str, ts: str, outcome: str, **changes: Any) -> DecisionRecord:
    event = {
        "event_id": event_id,
        "timestamp": ts,
        "account_id": "acct-1",
        "event_type": "payment",
        "amount": 20.0,
        "instrument_id": "card-1",
        "funding_source": "debit_card",
        "channel": "app",
    }
    event.update(changes.pop("event", {}))
    fields: dict[str, Any] = {
        "event_id": event_id,
        "decision": outcome,
        "body_hash": "h" * 64,
        "request": {"event": event},
        "features": {name: 0.5 for name in fs.FEATURE_NAMES},
    }
    fields.update(changes)
    return DecisionRecord(**fields)


def fraud_label(
    event_id: str, when: str, value: int = 1, source: str = "chargeback"
) -> LabelRecord:
    return LabelRecord(event_id, "is_fraud", value, ms(when), source, ms(when) + 1000)


def test_outcomes_follow_label_time_and_the_chargeback_window(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with SQLiteDecisionLog(path, KEY.encode()) as log:
        for record in (
            decision("good_old", "2026-08-01T10:00:00Z", "approve"),
            decision("charged_back", "2026-08-02T10:00:00Z", "approve"),
            decision("reversed", "2026-08-03T10:00:00Z", "challenge"),
            decision("label_after_cutoff", "2026-08-04T10:00:00Z", "approve"),
            decision("declined_unlabelled", "2026-08-05T10:00:00Z", "decline"),
            decision("declined_confirmed", "2026-08-06T10:00:00Z", "decline"),
            decision("degraded", "2026-08-07T10:00:00Z", "approve", degraded=True),
            decision("recent", "2026-10-20T10:00:00Z", "approve"),
            decision("recent_fraud", "2026-10-21T10:00:00Z", "approve"),
            decision(
                "application",
                "2026-08-08T10:00:00Z",
                "approve",
                event={"event_type": "credit_application"},
                features={"x": 1.0},
            ),
        ):
            log.append(record)
        for label in (
            fraud_label("charged_back", "2026-08-20T00:00:00Z"),
            fraud_label("reversed", "2026-08-10T00:00:00Z", source="customer_report"),
            fraud_label("reversed", "2026-08-15T00:00:00Z", value=0, source="analyst"),
            fraud_label("label_after_cutoff", "2026-11-05T00:00:00Z"),
            fraud_label("declined_confirmed", "2026-08-07T00:00:00Z", source="analyst"),
            fraud_label("recent_fraud", "2026-10-25T00:00:00Z"),
            LabelRecord("good_old", "defaulted", 1, ms("2026-10-01T00:00:00Z"), "collections", 1),
        ):
            log.add_label(label)
    notes: list[str] = []
    events, X, known, bias = known_outcomes(
        read_log(f"sqlite:///{path}"), pd.Timestamp(CUTOFF), notes
    )
    got = dict(zip(events["event_id"], known, strict=True))
    assert got == {
        "good_old": 0.0,  # went through, no chargeback within 45 days
        "charged_back": 1.0,
        "reversed": 0.0,  # the latest label known at the cut-off wins
        "label_after_cutoff": 0.0,  # as known at the cut-off: it looked good then
        "declined_confirmed": 1.0,  # a decline has an outcome only when someone labelled it
    }
    assert list(X.columns) == list(fs.FEATURE_NAMES) and len(X) == 5
    good_old = events.set_index("event_id").loc["good_old"]
    assert good_old["label_time"] == pd.Timestamp("2026-09-15T10:00:00Z")  # ts + 45 days
    assert bias["payment_decisions"] == 7  # before 2026-09-17, degraded included
    assert bias["share_declined"] == pytest.approx(2 / 7, abs=1e-6)
    assert (bias["with_outcome"], bias["without_outcome"]) == (6, 1)
    assert bias["fraud_rate_with_outcome"] == pytest.approx(2 / 6, abs=1e-6)
    approve, decline = bias["per_decision"]["approve"], bias["per_decision"]["decline"]
    assert (approve["decisions"], approve["with_outcome"], approve["explicitly_labelled"]) == (
        4,
        4,
        1,
    )
    assert (decline["decisions"], decline["with_outcome"], decline["fraud_rate_with_outcome"]) == (
        2,
        1,
        1.0,
    )
    text = " ".join(notes)
    assert "1 credit-application decisions" in text
    assert "2 payment decisions after 2026-09-17" in text
    assert "1 degraded decisions were left out" in text
    assert "declined payments have no outcome" in bias["statements"][0]


def test_bad_log_urls_name_the_forms(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected sqlite:///PATH"):
        read_log("mysql://db/x")
    with pytest.raises(DataError, match="no decision log at"):
        read_log(f"sqlite:///{tmp_path / 'missing.db'}")


def test_a_log_from_before_labels_reads_with_a_note(tmp_path: Path) -> None:
    from test_decision_log import record, write_v1_log

    path = tmp_path / "v1.db"
    write_v1_log(path, [record("old-1"), record("old-2")])
    contents = read_log(str(path))  # a plain path works too
    assert list(contents.decisions["event_id"]) == ["old-1", "old-2"]
    assert len(contents.labels) == 0
    assert contents.notes == ["the log predates labels (schema version 1): no feedback"]
    assert not contents.complete.any()  # the sample records hold three features only


# -- end to end: score a world, feed back its labels, train from the log ----------------------
def event_body(row: dict[str, Any]) -> dict[str, Any]:
    body = {}
    for key, value in row.items():
        if key in LABELS or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        body[key] = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if key == "timestamp" else value
    return body


def build_app(tmp: Path, world: World) -> Flask:
    accounts = tmp / "accounts.parquet"
    world.accounts.to_parquet(accounts, index=False)
    return create_app(
        {
            "MODELS_DIR": str(ROOT / "models"),
            "DECISION_LOG_PATH": str(tmp / "decisions.sqlite"),
            "DECISION_LOG_SYNC": "NORMAL",
            "HASH_KEY": KEY,
            "GC_TUNING": False,
            "ACCOUNTS_FILE": str(accounts),
            "MAX_LATENESS_SECONDS": 10**9,
        }
    )


def fill_log(app: Flask, world: World, log: DecisionLog | None = None) -> dict[str, int]:
    """Score every event through the scoring core, then send the world's fraud as feedback:
    chargebacks for frauds that went through, analyst labels for every other declined fraud."""
    scorer = app.extensions["risk"]
    if log is not None:
        scorer.log.close()
        scorer.log = log
    client = app.test_client()
    decisions: dict[str, str] = {}
    for row in world.events.to_dict(orient="records"):
        request = validate_score_request(event_body(row), now_ms=int(time.time() * 1000))
        decisions[row["event_id"]] = scorer.score(request)["decision"]
    counts = {"chargeback": 0, "analyst": 0}
    frauds = world.events[world.events["is_fraud"] == 1]
    for i, row in enumerate(frauds.to_dict(orient="records")):
        declined = decisions[row["event_id"]] == "decline"
        if declined and i % 2:
            continue
        source = "analyst" if declined else "chargeback"
        label = {
            "event_id": row["event_id"],
            "is_fraud": 1,
            "label_time": row["label_time"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": source,
        }
        answer = client.post("/feedback", json=label)  # the HTTP path, as clients send it
        assert answer.status_code == 200, answer.get_json()
        counts[source] += 1
    return counts


@dataclass(frozen=True)
class Trained:
    root: Path
    summary: list[str]
    feedback: dict[str, int]


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(**WORLD)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sqlite_log(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, int]]]:
    tmp = tmp_path_factory.mktemp("scored")
    app = build_app(tmp, world)
    try:
        feedback = fill_log(app, world)
    finally:
        app.extensions["risk"].log.close()
    yield tmp / "decisions.sqlite", feedback


@pytest.fixture(scope="module")
def trained(
    sqlite_log: tuple[Path, dict[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """`risk train --from-log sqlite:///...`, as a user would run it."""
    path, feedback = sqlite_log
    root = tmp_path_factory.mktemp("trained")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "train",
                "--from-log",
                f"sqlite:///{path}",
                "--models",
                str(root / "models"),
                "--reports",
                str(root / "reports"),
                "--train-until",
                CUTOFF,
                "--seed",
                "3",
            ]
        )
    assert code == 0, out.getvalue()
    return Trained(root, out.getvalue().splitlines(), feedback)


@pytest.mark.slow
def test_a_bundle_trained_from_the_log_serves(trained: Trained) -> None:
    registry = Registry(trained.root / "models")
    version = registry.champion("fraud")
    assert version is not None and version.startswith("fraud-")
    bundle = verify_bundle(
        registry.bundle_dir("fraud", version),
        expected_kind="fraud",
        feature_set_version=fs.FEATURE_SET_VERSION,
        feature_names=fs.FEATURE_NAMES,
    )
    m = bundle.manifest
    assert m["train_until"] == pd.Timestamp(CUTOFF).isoformat()
    assert m["training_source"]["decision_log"].endswith("decisions.sqlite")
    assert len(m["training_data_fingerprint"]) == 64
    counts = m["metrics"]["counts"]
    assert counts["train_frauds"] > 0 and counts["valid_frauds"] > 0 and counts["test_frauds"] > 0
    assert m["metrics"]["test"]["model"]["roc_auc"] > 0.8
    model = FraudModel(bundle)
    assert model.predict_proba(pd.DataFrame([[0.0] * len(fs.FEATURE_NAMES)]).to_numpy()).shape == (
        1,
    )


@pytest.mark.slow
def test_the_report_quantifies_the_selection_bias(trained: Trained) -> None:
    version = Registry(trained.root / "models").champion("fraud")
    report = trained.root / "reports" / str(version)
    html = (report / "index.html").read_text()
    assert "declined payments have no outcome" in html
    assert "Pay-later: credit that was not approved has no default outcome" in html
    bias = json.loads((report / "selection_bias.json").read_text())
    per = bias["per_decision"]
    assert {"approve", "decline"} <= set(per)
    assert 0 < bias["share_declined"] < 0.5
    assert bias["without_outcome"] > 0  # the declines nobody labelled
    assert per["approve"]["share_with_outcome"] == 1.0  # no chargeback in 45 days: good
    assert per["decline"]["share_with_outcome"] < 1.0
    assert per["decline"]["fraud_rate_with_outcome"] == 1.0  # only frauds get labelled there
    assert per["decline"]["explicitly_labelled"] == trained.feedback["analyst"]
    assert "0 < fraud" not in html and bias["statements"][0] in html


@pytest.mark.slow
def test_too_little_history_names_the_minimum(
    sqlite_log: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    path, _ = sqlite_log
    with pytest.raises(DataError, match=f"at least {MIN_LABELLED:,} payment decisions"):
        run_training_from_log(
            url=f"sqlite:///{path}",
            models_dir=tmp_path / "m",
            reports_dir=tmp_path / "r",
            train_until=pd.Timestamp("2026-06-20T00:00:00Z").to_pydatetime(),
        )
    assert not (tmp_path / "m" / "fraud").exists() or not any((tmp_path / "m" / "fraud").iterdir())


@pytest.mark.slow
def test_cli_says_what_it_did_and_refuses_mixed_sources(
    trained: Trained, tmp_path: Path, capsys: Any
) -> None:
    assert trained.summary[0].startswith("fraud: reading decisions and labels from")
    made = [line for line in trained.summary if line.startswith("fraud model fraud-")]
    assert len(made) == 1 and "(from the decision log): test ROC-AUC" in made[0]
    assert any(line.startswith("Selection bias: declined payments") for line in trained.summary)
    assert main(["train", "--from-log", "x.db", "--data", str(tmp_path), "--quiet"]) == 2
    assert "--from-log trains from the log alone" in capsys.readouterr().err
    assert main(["train", "--from-log", "mysql://x/y", "--quiet"]) == 2
    assert "expected sqlite:///PATH" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_train_from_a_postgresql_log_equals_sqlite(
    world: World, trained: Trained, pg_url: str, tmp_path: Path
) -> None:
    from risk_service.decision_log_pg import PostgresDecisionLog

    app = build_app(tmp_path, world)
    # This test is about training from PostgreSQL; durability is tested in
    # test_decision_log_pg.py. Without the commit fsync the 11k appends take seconds.
    fast = pg_url + "%20-csynchronous_commit%3Doff"
    pg_log = PostgresDecisionLog(fast, KEY.encode(), spool_path=tmp_path / "spool")
    try:
        feedback = fill_log(app, world, pg_log)
        assert pg_log.status()["spooled"] == 0
    finally:
        pg_log.close()
    assert feedback == trained.feedback
    summary = run_training_from_log(
        url=pg_url,  # the reader needs no hash key and reads the server's own settings
        models_dir=tmp_path / "models",
        reports_dir=tmp_path / "reports",
        seed=3,
        train_until=pd.Timestamp(CUTOFF).to_pydatetime(),
    )
    version = Registry(tmp_path / "models").champion("fraud")
    assert version == Registry(trained.root / "models").champion("fraud")  # same data, same model
    made = [line for line in trained.summary if line.startswith("fraud model fraud-")]
    assert summary[0] == made[0]  # same version, same headline metrics
