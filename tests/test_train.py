"""`risk train` end to end on a small world: bundles, report, time rules, reproducibility."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from risk_service import features as fs
from risk_service import schema
from risk_service.bundles import BundleError, Registry, sha256_file, verify_bundle
from risk_service.fraud_model import FraudModel
from training.cli import main
from training.simulate import simulate
from training.train import run_training

WORLD = {"accounts": 1500, "days": 120, "seed": 7, "start": date(2026, 8, 1)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    simulate(out, **WORLD)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    run_training(data_dir=world, models_dir=root / "models", reports_dir=root / "reports", seed=3)
    return root


def model_files(models_dir: Path, kind: str) -> dict[str, str]:
    version = Registry(models_dir).champion(kind)
    assert version is not None
    directory = models_dir / kind / version
    return {
        p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.name != "manifest.json"
    }


def test_bundles_are_complete_and_verified(trained: Path) -> None:
    registry = Registry(trained / "models")
    for kind in ("fraud", "credit"):
        version = registry.champion(kind)
        assert version is not None and version.startswith(f"{kind}-")
        bundle = verify_bundle(registry.bundle_dir(kind, version), expected_kind=kind)
        m = bundle.manifest
        for key in (
            "files",
            "feature_set_version",
            "feature_names",
            "training_data_fingerprint",
            "seed",
            "time_ranges",
            "metrics",
            "library_versions",
            "created_at",
        ):
            assert key in m, f"{kind} manifest lacks {key}"
        assert m["seed"] == 3
        assert len(m["training_data_fingerprint"]) == 64
        assert "lightgbm" in m["library_versions"]
    fraud = verify_bundle(registry.bundle_dir("fraud", registry.champion("fraud") or ""))
    assert fraud.manifest["feature_names"] == list(fs.FEATURE_NAMES)
    t = fraud.manifest["thresholds"]
    assert 0 < t["challenge"] <= t["review"] <= t["decline"] <= 1.0 + 1e-9
    assert any(name.endswith(".txt") for name in fraud.manifest["files"])


def test_model_beats_baselines_and_report_is_self_contained(trained: Path) -> None:
    reports = list((trained / "reports").iterdir())
    assert len(reports) == 1
    html = (reports[0] / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert "http://" not in html and "https://" not in html and "<script" not in html
    metrics = json.loads((reports[0] / "metrics.json").read_text())
    test = metrics["fraud"]["test"]
    assert test["model"]["roc_auc"] > 0.8
    assert test["model"]["average_precision"] > test["rules"]["average_precision"]
    assert 0 <= test["model"]["recall_at_fpr_0.01"] <= 1
    assert set(metrics["fraud"]["scenarios"]) <= set(schema.FRAUD_SCENARIOS)
    credit = metrics["credit"]["test"]["champion"]
    assert 0.6 < credit["roc_auc"] < 0.95


def test_labels_after_train_until_cannot_change_the_model(world: Path, tmp_path: Path) -> None:
    """As of T, flipping every label that becomes known at or after T changes nothing."""
    events = pd.read_parquet(world / "events.parquet")
    until = events["timestamp"].min() + pd.Timedelta(days=110)
    altered = tmp_path / "altered"
    altered.mkdir()
    for name in ("accounts.parquet", "credit.parquet"):
        (altered / name).write_bytes((world / name).read_bytes())
    future = events["label_time"] >= until
    changed = events.copy()
    changed.loc[future, "is_fraud"] = (1 - changed.loc[future, "is_fraud"]).astype("int8")
    changed.loc[future & (changed["timestamp"] >= until), "amount"] *= 3
    changed.to_parquet(altered / "events.parquet", index=False)
    a, b = tmp_path / "a", tmp_path / "b"
    kwargs = {"seed": 1, "train_until": until.to_pydatetime()}
    run_training(data_dir=world, models_dir=a, reports_dir=tmp_path / "ra", **kwargs)
    run_training(data_dir=altered, models_dir=b, reports_dir=tmp_path / "rb", **kwargs)
    assert model_files(a, "fraud") == model_files(b, "fraud")
    manifest = verify_bundle(a / "fraud" / (Registry(a).champion("fraud") or "")).manifest
    assert pd.Timestamp(manifest["time_ranges"]["valid_end"]) <= until


@pytest.fixture(scope="module")
def good_sample(world: Path, trained: Path) -> tuple[FraudModel, pd.DataFrame]:
    registry = Registry(trained / "models")
    bundle = verify_bundle(registry.bundle_dir("fraud", registry.champion("fraud") or ""))
    events = pd.read_parquet(world / "events.parquet")
    X = fs.compute_offline_features(events, pd.read_parquet(world / "accounts.parquet"))
    return FraudModel(bundle), X[events["is_fraud"] == 0].sample(1000, random_state=0)


def shift(model: FraudModel, sample: pd.DataFrame, changes: dict[str, Any]) -> tuple[float, float]:
    """(mean score ratio, share of rows not lower) when `changes` are applied to good events."""
    changed = sample.copy()
    for name, change in changes.items():
        changed[name] = change(changed[name]) if callable(change) else change
    before = model.predict_proba(sample.to_numpy())
    after = model.predict_proba(changed.to_numpy())
    return float(after.mean() / before.mean()), float((after >= before).mean())


NEW_DEVICE_BURST: dict[str, Any] = {
    "is_new_device_for_account": 1,
    "is_new_ip_for_account": 1,
    "account_events_10m": lambda v: v + 6,
    "account_events_1h": lambda v: v + 6,
    "account_events_24h": lambda v: v + 6,
    "device_events_10m": 6,
    "device_events_1h": 6,
    "device_events_24h": 6,
    "seconds_since_account_previous_event": 45.0,
}


def test_more_velocity_on_a_new_device_scores_higher(
    good_sample: tuple[FraudModel, pd.DataFrame],
) -> None:
    """Behavioural: the same good events, now from a new device in a burst, look riskier.

    The simulator's new-phone look-alikes make a burst alone only mildly suspicious."""
    ratio, not_lower = shift(*good_sample, NEW_DEVICE_BURST)
    assert ratio > 1.2
    assert not_lower > 0.9


def test_takeover_pattern_scores_much_higher(
    good_sample: tuple[FraudModel, pd.DataFrame],
) -> None:
    """New device, burst, a transfer to a new payee at six times the usual amount."""
    changes = {
        **NEW_DEVICE_BURST,
        "event_type": 1.0,  # transfer
        "is_new_payee_for_account": 1,
        "amount_to_account_mean_30d": 6.0,
        "amount": lambda v: v * 6,
    }
    ratio, not_lower = shift(*good_sample, changes)
    assert ratio > 3
    assert not_lower > 0.95


@pytest.mark.parametrize(
    "changes",
    [
        {
            "device_small_payments_10m": 8,
            "device_small_payments_1h": 12,
            "instrument_small_payments_10m": 8,
            "instrument_small_payments_1h": 12,
        },
        {
            "device_distinct_accounts_24h": 8,
            "device_distinct_accounts_7d": 12,
            "account_age_days": 0.5,
        },
    ],
    ids=["card_testing_burst", "account_farm_device"],
)
def test_scenario_traces_raise_the_score(
    good_sample: tuple[FraudModel, pd.DataFrame], changes: dict[str, Any]
) -> None:
    ratio, not_lower = shift(*good_sample, changes)
    assert ratio > 1.1
    assert not_lower > 0.9


def test_required_columns_only_still_trains(world: Path, tmp_path: Path) -> None:
    events = pd.read_parquet(world / "events.parquet")
    bare = tmp_path / "bare"
    bare.mkdir()
    keep = ["event_id", "timestamp", "account_id", "event_type", "amount", "is_fraud"]
    events[keep].to_csv(bare / "events.csv", index=False)
    lines = run_training(data_dir=bare, models_dir=tmp_path / "m", reports_dir=tmp_path / "r")
    assert any(line.startswith("fraud model") for line in lines)
    report = next((tmp_path / "r").iterdir())
    notes = json.loads((report / "metrics.json").read_text())["notes"]
    assert any("no accounts table" in n for n in notes)
    assert any("label_time" in n for n in notes)
    assert any("optional column" in n for n in notes)


def test_cli_train_with_the_same_seed_gives_byte_identical_models_and_verifies_them(
    world: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`risk train` on the same data and seed as `trained` (another process's run through the
    API, other output directories): the same versions, file for file the same bytes."""
    models = tmp_path / "models"
    args = ["train", "--data", str(world), "--models", str(models), "--seed", "3"]
    assert main([*args, "--reports", str(tmp_path / "reports"), "--quiet"]) == 0
    for kind in ("fraud", "credit"):
        assert model_files(models, kind) == model_files(trained / "models", kind)
        assert Registry(models).champion(kind) == Registry(trained / "models").champion(kind)
    assert main(["models", "verify", "--models", str(models)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 2
    version = Registry(models).champion("fraud") or ""
    (models / "fraud" / version / "fraud_meta.json").write_text("{}")
    assert main(["models", "verify", "--models", str(models)]) == 2
    assert "FAILED" in capsys.readouterr().out
    with pytest.raises(BundleError):
        FraudModel(verify_bundle(models / "fraud" / version))


def test_risk_report_rebuilds_the_same_evaluation(
    world: Path, trained: Path, tmp_path: Path
) -> None:
    code = main(
        [
            "report",
            "--models",
            str(trained / "models"),
            "--data",
            str(world),
            "--reports",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    rebuilt = json.loads(next(tmp_path.iterdir()).joinpath("metrics.json").read_text())
    original = json.loads(
        next((trained / "reports").iterdir()).joinpath("metrics.json").read_text()
    )
    for name in ("model", "rules"):
        assert rebuilt["fraud"]["test"][name] == pytest.approx(original["fraud"]["test"][name])
    assert rebuilt["credit"]["test"]["champion"]["roc_auc"] == pytest.approx(
        original["credit"]["test"]["champion"]["roc_auc"]
    )


def test_bring_your_own_credit_table(tmp_path: Path) -> None:
    """`risk train --credit-data` on the German credit data nobody here generated."""
    german = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "german.data"
    assert german.is_file(), f"the shared datasets are expected beside the checkout: {german}"
    code = main(
        [
            "train",
            "--credit-data",
            str(german),
            "--target",
            "defaulted",
            "--models",
            str(tmp_path / "m"),
            "--reports",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 0
    registry = Registry(tmp_path / "m")
    manifest = verify_bundle(
        registry.bundle_dir("credit", registry.champion("credit") or "")
    ).manifest
    assert manifest["feature_source"] == "table"
    assert "personal_status_sex" not in manifest["feature_names"]
    cv = manifest["metrics"]["test"]["cross_validation"]
    assert cv["champion_auc_mean"] > 0.75
    metrics = json.loads(next((tmp_path / "r").iterdir()).joinpath("metrics.json").read_text())
    assert "personal_status_sex" in metrics["credit"]["groups"]
