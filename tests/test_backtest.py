"""`risk backtest`: the decisions equal what POST /score answers for the same events replayed in
order (two policies side by side), the --credit-data table mode, and clear errors."""

from __future__ import annotations

import heapq
import json
import math
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from risk_service import create_app
from risk_service import features as fs
from risk_service.requests import validate_score_request
from risk_service.service import save_snapshot
from training.backtest import run_backtest
from training.cli import main
from training.simulate import generate_world

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
WORLD = {"accounts": 250, "days": 120, "seed": 7, "start": date(2026, 3, 1)}
START, END = "2026-06-01T00:00:00Z", "2026-06-22T00:00:00Z"
LABELS = {"is_fraud", "label_time", "fraud_scenario"}
STRICT_POLICY = """
version = "strict-test-1"
[[rules]]
name = "large_amount"
when = [["amount", ">", 800]]
action = "challenge"
reason = "amount over 800"
[[rules]]
name = "new_device_transfer"
when = [["event_type", "==", "transfer"], ["is_new_device_for_account", "==", 1]]
action = "review"
reason = "transfer from a new device"
[lists.block]
devices = [{device}]
"""


def _with_same_instant_ties(events: pd.DataFrame) -> pd.DataFrame:
    """Move a few accounts' previous events onto their pay-later payment's instant, so the
    credit features must count same-instant predecessors as the service does."""
    events = events.copy()
    done = 0
    for i in np.flatnonzero((events["funding_source"] == "credit_line").to_numpy()):
        acct = events.at[i, "account_id"]
        earlier = np.flatnonzero(events["account_id"].to_numpy()[:i] == acct)
        if len(earlier) and events.at[i, "timestamp"] > pd.Timestamp(START):
            events.at[earlier[-1], "timestamp"] = events.at[i, "timestamp"]
            done += 1
        if done == 3:
            break
    order = np.argsort(events["timestamp"].to_numpy(), kind="stable")
    return events.iloc[order].reset_index(drop=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("world")
    w = generate_world(**WORLD)  # type: ignore[arg-type]
    events = _with_same_instant_ties(w.events.reset_index(drop=True))
    events.to_parquet(root / "events.parquet", index=False)
    w.accounts.to_parquet(root / "accounts.parquet", index=False)
    w.credit.to_parquet(root / "credit.parquet", index=False)
    policy = root / "strict.toml"
    policy.write_text(STRICT_POLICY.format(device=json.dumps(str(events["device_id"].iloc[50]))))
    return root, events, policy


@pytest.fixture(scope="module")
def backtest(
    world: tuple[Path, pd.DataFrame, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root, _, policy = world
    out = tmp_path_factory.mktemp("out")
    default = ROOT / "risk_service" / "policies" / "default.toml"
    run_backtest(
        data_dir=root, models_dir=MODELS, out_dir=out, policies=[default, policy],
        start=pd.Timestamp(START), end=pd.Timestamp(END),
    )  # fmt: skip
    return out


def _body(row: dict[str, Any]) -> dict[str, Any]:
    body = {}
    for key, value in row.items():
        if key in LABELS or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        body[key] = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if key == "timestamp" else value
    return body


@pytest.fixture(scope="module")
def served(
    world: tuple[Path, pd.DataFrame, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, dict[str, Any]]]]:
    """Every event up to END through two services (default and strict policy), in order,
    labels ingested at their label_time; the answers by policy and event id.

    The events of the backtest's window go through POST /score; the warm-up before it (three
    quarters of the events, whose answers are not compared) goes straight to the scorer the
    route calls, with the same validation and the same JSON round trip, to spare the test
    client's overhead: the state it builds is the same. The warm-up runs once, in the first
    service; the second starts as a restart would, from its state snapshot and a copy of its
    decision log (features never depend on a decision, so the policy changes nothing there):
    the window's answers then also show that a restored state scores as the state it was
    taken from."""
    root, events, policy = world
    tmp = tmp_path_factory.mktemp("service")
    snapshot = tmp / "state.snapshot"

    def start(name: str, policy_file: str | None) -> Flask:
        return create_app(
            {
                "MODELS_DIR": str(MODELS),
                "DECISION_LOG_PATH": str(tmp / f"{name}.sqlite"),
                "DECISION_LOG_SYNC": "NORMAL",
                "HASH_KEY": "test-key-" + "x" * 32,
                "GC_TUNING": False,
                "ACCOUNTS_FILE": str(root / "accounts.parquet"),
                "POLICY_FILE": policy_file,
                "MAX_LATENESS_SECONDS": 10**9,
                "STATE_SNAPSHOT_PATH": str(snapshot),
                "STATE_SNAPSHOT_INTERVAL_SECONDS": 0,
            }
        )

    apps: dict[str, Flask] = {"c1": start("c1", None)}
    clients = {"c1": apps["c1"].test_client()}
    answers: dict[str, dict[str, dict[str, Any]]] = {"c1": {}, "c2": {}}
    labels: list[tuple[pd.Timestamp, str]] = []
    lo, hi = pd.Timestamp(START), pd.Timestamp(END)
    for row in events.to_dict(orient="records"):
        if row["timestamp"] >= hi:
            break  # events are in time order; nothing after the window is compared
        if row["timestamp"] >= lo and "c2" not in apps:
            assert save_snapshot(apps["c1"]) > 200  # the accounts, devices, merchants, ...
            # and its decision log, where a label finds the entities of an event scored
            # before (a restart keeps both)
            source, copy = sqlite3.connect(tmp / "c1.sqlite"), sqlite3.connect(tmp / "c2.sqlite")
            with closing(source), closing(copy):
                source.backup(copy)
            apps["c2"] = start("c2", str(policy))
            clients["c2"] = apps["c2"].test_client()
            assert not snapshot.exists()  # taken by the second service
        while labels and labels[0][0] < row["timestamp"]:
            label_time, event_id = heapq.heappop(labels)
            for app in apps.values():
                app.extensions["risk"].ingest_label(event_id, 1, label_time)
        for name, app in apps.items():
            if row["timestamp"] < lo:
                body = json.loads(json.dumps(_body(row)))
                request = validate_score_request(body, now_ms=int(time.time() * 1000))
                app.extensions["risk"].score_request(request)
                continue
            response = clients[name].post("/score", json=_body(row))
            assert response.status_code == 200, response.get_json()
            answers[name][row["event_id"]] = response.get_json()
        if row["is_fraud"] == 1:
            heapq.heappush(labels, (row["label_time"], row["event_id"]))
    yield answers
    for app in apps.values():
        app.extensions["risk"].log.close()


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9


def test_decisions_equal_the_service_for_two_policies(
    backtest: Path, served: dict[str, dict[str, dict[str, Any]]]
) -> None:
    decisions = pd.read_parquet(backtest / "decisions.parquet")
    assert len(decisions) == len(served["c1"]) > 2000
    assert list(decisions["event_id"]) == list(served["c1"])
    credit_checked = 0
    for name in ("c1", "c2"):
        for row in decisions.to_dict(orient="records"):
            answer = served[name][row["event_id"]]
            where = (name, row["event_id"])
            assert row[f"decision__{name}"] == answer["decision"], where
            assert _close(row[f"fraud_probability__{name}"], answer["fraud"]["probability"]), where
            assert row[f"fraud_score__{name}"] == answer["fraud"]["score"], where
            assert json.loads(row[f"rules_fired__{name}"]) == answer["rules_fired"], where
            if answer["decision"] != "approve":
                reasons = json.loads(row[f"reasons__{name}"])
                assert [r["feature"] for r in reasons] == [
                    r["feature"] for r in answer["fraud"]["reasons"]
                ], where
            else:
                assert pd.isna(row[f"reasons__{name}"])
            credit = answer.get("credit")
            if credit is not None and "probability_of_default" in credit:
                pd_ = row[f"probability_of_default__{name}"]
                assert _close(pd_, credit["probability_of_default"]), where
                assert row[f"credit_band__{name}"] == credit["band"], where
                assert row[f"recommended_limit__{name}"] == credit["recommended_limit"], where
                assert row[f"within_limit__{name}"] == credit["limit_check"]["within_limit"]
                credit_checked += 1
            else:
                assert pd.isna(row[f"probability_of_default__{name}"])
    assert credit_checked > 100
    # the two policies really differ somewhere, and the block list fired
    assert (decisions["decision__c1"] != decisions["decision__c2"]).any()


def test_summary_and_report(backtest: Path) -> None:
    summary = json.loads((backtest / "summary.json").read_text())
    assert set(summary["candidates"]) == {"c1", "c2"}
    assert summary["candidates"]["c2"]["policy"] == "strict-test-1"
    for name in ("c1", "c2"):
        m = summary["fraud"][name]
        rates = sum(m[f"{d}_rate"] for d in ("approve", "challenge", "review", "decline"))
        assert rates == pytest.approx(1.0)
        assert m["labelled_events"] + m["pending_labels"] == m["events"]
        assert m["fraud_caught"] <= m["fraud_total"]
        assert "recall_by_scenario" in m and "card_precision_at_100" in m
    assert summary["credit"]["c1"]["credit_line_payments"] > 100
    page = (backtest / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6
    assert "pending" in page and "<script" not in page


def test_cli_one_candidate_same_decisions(
    world: tuple[Path, pd.DataFrame, Path], backtest: Path, tmp_path: Path
) -> None:
    root, _, _ = world
    code = main(["backtest", "--data", str(root), "--models", str(MODELS), "--out",
                 str(tmp_path), "--from", START, "--to", END, "--quiet"])  # fmt: skip
    assert code == 0
    one = pd.read_parquet(tmp_path / "decisions.parquet")
    both = pd.read_parquet(backtest / "decisions.parquet")
    assert list(one["decision"]) == list(both["decision__c1"])
    assert np.array_equal(one["fraud_probability"], both["fraud_probability__c1"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "fraud=fraud-nope"], "unknown fraud model version"),
        (["--version", "credit=credit-nope"], "unknown credit model version"),
        (["--version", "frod=x"], "expected fraud=VERSION"),
        (["--from", "2030-01-01", "--to", "2030-02-01"], "empty date range"),
        (["--from", "2026-03-20", "--to", "2026-03-10"], "empty date range"),
        (["--policy", "no-such-policy.toml"], "cannot read the policy file"),
    ],
)
def test_bad_input_is_one_clear_line(
    world: tuple[Path, pd.DataFrame, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    root, _, _ = world
    code = main(["backtest", "--data", str(root), "--models", str(MODELS),
                 "--out", str(tmp_path / "o"), "--quiet", *args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_missing_column_is_named(
    world: tuple[Path, pd.DataFrame, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, events, _ = world
    data = tmp_path / "data"
    data.mkdir()
    events.drop(columns=["amount"]).to_parquet(data / "events.parquet", index=False)
    shutil.copy(root / "accounts.parquet", data / "accounts.parquet")
    code = main(["backtest", "--data", str(data), "--models", str(MODELS),
                 "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "lacks required column(s): amount" in capsys.readouterr().err


@pytest.fixture(scope="module")
def german_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.train import run_training

    models = tmp_path_factory.mktemp("german-models")
    run_training(
        data_dir=None, models_dir=models, reports_dir=models.parent / "german-reports",
        credit_data=DATASETS / "german.data", target="defaulted",
    )  # fmt: skip
    return models


def test_credit_data_mode_keeps_input_order(german_models: Path, tmp_path: Path) -> None:
    from training.credit import CreditModels
    from training.credit_pipeline import read_application_table

    source = DATASETS / "german.data"
    table = read_application_table(source)
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled.insert(0, "application_id", [f"app{i}" for i in range(len(shuffled))])
    path = tmp_path / "apps.csv"
    shuffled.to_csv(path, index=False)
    code = main(["backtest", "--credit-data", str(path), "--models", str(german_models),
                 "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert code == 0
    out = pd.read_parquet(tmp_path / "o" / "credit_decisions.parquet")
    assert list(out.columns) == [
        "application_id", "probability_of_default", "score", "band", "decision"
    ]  # fmt: skip
    assert list(out["application_id"]) == list(shuffled["application_id"])
    champion = json.loads((german_models / "registry.json").read_text())["credit"]["champion"]
    models = CreditModels.load(german_models / "credit" / champion)
    assert np.allclose(out["probability_of_default"], models.predict_pd(shuffled), atol=1e-12)
    assert set(out["decision"]) <= {"approve", "review", "decline"}


def test_credit_data_missing_column_and_event_model(
    german_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.credit_pipeline import read_application_table

    table = read_application_table(DATASETS / "german.data").drop(columns=["duration_months"])
    path = tmp_path / "apps.csv"
    table.to_csv(path, index=False)
    code = main(["backtest", "--credit-data", str(path), "--models", str(german_models),
                 "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "duration_months" in capsys.readouterr().err
    code = main(["backtest", "--credit-data", str(DATASETS / "german.data"),
                 "--models", str(MODELS), "--out", str(tmp_path / "o2"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "computes its features from events" in capsys.readouterr().err


def test_feature_tasks_cover_every_feature_once() -> None:
    from training.backtest_dask import feature_tasks

    owned = [f for columns in feature_tasks().values() for f in columns]
    assert sorted(owned) == sorted(fs.FEATURE_NAMES)
    tasks = feature_tasks()
    assert "account_received_events_1h" in tasks[("payee_account_id", "account_id")]
    assert "device_distinct_accounts_24h" in tasks[("device_id", "device_id")]
    assert "account_events_24h" in tasks[("account_id", "account_id")]


def test_dask_local_cluster_gives_identical_features_and_decisions(
    world: tuple[Path, pd.DataFrame, Path], backtest: Path, tmp_path: Path
) -> None:
    """The same command on a LocalCluster: every feature and every decision identical."""
    from training.backtest_dask import compute_features_on_dask

    root, events, _ = world
    accounts = pd.read_parquet(root / "accounts.parquet")
    single = fs.compute_offline_features(events, accounts).to_numpy(np.float64)
    distributed = compute_features_on_dask(events, accounts, "local")
    assert np.array_equal(single, distributed, equal_nan=True)
    code = main(["backtest", "--data", str(root), "--models", str(MODELS), "--out",
                 str(tmp_path), "--from", START, "--to", END, "--scheduler", "local",
                 "--quiet"])  # fmt: skip
    assert code == 0
    on_dask = pd.read_parquet(tmp_path / "decisions.parquet")
    local = pd.read_parquet(backtest / "decisions.parquet")
    assert list(on_dask["decision"]) == list(local["decision__c1"])
    assert np.array_equal(on_dask["fraud_probability"], local["fraud_probability__c1"])
