"""`risk report`: re-evaluate the champion bundles on data, in their recorded periods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd

from risk_service import features as fs
from risk_service.bundles import Registry, VerifiedBundle, verify_bundle
from risk_service.fraud_model import BOOSTER_FILE, CALIBRATOR_FILE, META_FILE
from training import fraud as fr
from training.costs import ThresholdChoice
from training.credit import CreditModels, evaluate_credit
from training.credit_pipeline import CreditRun
from training.datasets import DataError, Tables, TimeSplit, labels_known_by
from training.fraud_pipeline import FraudRun, evaluate_fraud
from training.model_admin import verify_for_serving


def _fitted_from_bundle(bundle: VerifiedBundle) -> fr.FittedFraudModel:
    import json

    meta = json.loads(bundle.path(META_FILE).read_text())
    booster = lgb.Booster(model_str=bundle.path(BOOSTER_FILE).read_text())
    calibrator = joblib.load(bundle.path(CALIBRATOR_FILE))  # hash verified above
    return fr.FittedFraudModel(
        booster,
        calibrator,
        list(bundle.manifest["feature_names"]),
        list(meta.get("categorical", [])),
        int(meta.get("best_iteration", booster.current_iteration())),
        dict(meta.get("params", {})),
    )


def reevaluate_fraud(
    bundle: VerifiedBundle, tables: Tables, config: dict[str, Any]
) -> FraudRun | None:
    events = tables.events
    if events is None or "is_fraud" not in events.columns:
        return None
    m = bundle.manifest
    split = TimeSplit(**{k: pd.Timestamp(v) for k, v in m["time_ranges"].items()})
    as_of = pd.Timestamp(m["train_until"]) if m.get("train_until") else None
    known = (
        labels_known_by(events, as_of, "is_fraud")
        if as_of is not None
        else events["is_fraud"].astype("float64")
    )
    scope = events[events["timestamp"] < split.test_end].reset_index(drop=True)
    known = known.iloc[: len(scope)].reset_index(drop=True)
    X = fs.compute_offline_features(scope, tables.accounts)
    ts = scope["timestamp"]
    train = ((ts >= split.train_start) & (ts < split.train_end) & known.notna()).to_numpy()
    valid = ((ts >= split.valid_start) & (ts < split.valid_end) & known.notna()).to_numpy()
    test = ((ts >= split.test_start) & (ts < split.test_end)).to_numpy()
    y_test = scope["is_fraud"].to_numpy(np.int64)[test]
    if not test.any() or y_test.sum() == 0 or not train.any():
        raise DataError(
            f"the data does not cover the periods of {bundle.version} "
            f"({split.train_start} – {split.test_end}) with labelled fraud"
        )
    validation = m["metrics"]["policy_on_validation"]
    choice = ThresholdChoice(
        thresholds=dict(m["thresholds"]),
        cost=float(validation["cost"]),
        cost_approve_all=float(validation["cost_approve_all"]),
        rates=dict(validation["rates"]),
        reviews_per_day=float(validation["reviews_per_day"]),
    )
    run = evaluate_fraud(
        _fitted_from_bundle(bundle),
        X,
        scope,
        split=split,
        masks=(train, valid, test),
        y_train=known[train].to_numpy(np.int64),
        y_valid=known[valid].to_numpy(np.int64),
        y_test=y_test,
        choice=choice,
        config=config,
        seed=int(m.get("seed", 0)),
        notes=[],
        gap=split.valid_start - split.train_end,
    )
    run.version = bundle.version
    return run


def reevaluate_credit(
    bundle: VerifiedBundle, tables: Tables, config: dict[str, Any]
) -> CreditRun | None:
    m = bundle.manifest
    if m.get("feature_source") != "events" or tables.events is None or tables.credit is None:
        return None
    credit = tables.credit.sort_values("timestamp", kind="stable").reset_index(drop=True)
    test_range = m["time_ranges"]["test"]
    start, end = pd.Timestamp(test_range[0]), pd.Timestamp(test_range[1])
    in_test = (credit["timestamp"] >= start) & (credit["timestamp"] <= end)
    train_range = m["time_ranges"]["train"]
    in_train = (credit["timestamp"] >= pd.Timestamp(train_range[0])) & (
        credit["timestamp"] <= pd.Timestamp(train_range[1])
    )
    X = fs.compute_offline_credit_features(tables.events, tables.accounts, credit)
    y = credit["defaulted"].to_numpy(np.int64)
    models = CreditModels.load(bundle.directory)
    metrics = evaluate_credit(
        models, X[in_test.to_numpy()], y[in_test.to_numpy()], X_ref=X[in_train.to_numpy()]
    )
    return CreditRun(
        models=models,
        feature_names=list(m["feature_names"]),
        feature_set_version=m["feature_set_version"],
        feature_source="events",
        ranges=m["time_ranges"],
        metrics=metrics,
        version=bundle.version,
    )


def reevaluate_champions(
    models_dir: Path, tables: Tables, *, config: dict[str, Any], progress: bool = False
) -> tuple[FraudRun | None, CreditRun | None]:
    registry = Registry(models_dir)
    runs: list[Any] = []
    for kind, fn in (("fraud", reevaluate_fraud), ("credit", reevaluate_credit)):
        version = registry.champion(kind)
        if version is None:
            runs.append(None)
            continue
        verify_for_serving(registry, kind, version)
        bundle = verify_bundle(registry.bundle_dir(kind, version), expected_kind=kind)
        runs.append(fn(bundle, tables, config))
    return runs[0], runs[1]
