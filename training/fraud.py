"""Fitting the fraud model: LightGBM with out-of-time early stopping, Platt calibration,
and two honest baselines (hand-written rules, logistic regression) on the same split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from risk_service.fraud_model import BOOSTER_FILE, CALIBRATOR_FILE, META_FILE, PlattMap, logit


def lgbm_params(seed: int) -> dict[str, Any]:
    """Deterministic LightGBM settings: same data and seed give a byte-identical model."""
    return {
        "objective": "binary",
        "metric": "average_precision",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_child_samples": 100,
        "min_sum_hessian_in_leaf": 1e-3,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "cat_smooth": 10.0,
        "max_cat_to_onehot": 8,
        "max_bin": 255,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbose": -1,
    }


@dataclass
class FittedFraudModel:
    """What training produced, before it is written as a bundle."""

    booster: lgb.Booster
    calibrator: LogisticRegression
    feature_names: list[str]
    categorical: list[str]
    best_iteration: int
    params: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def raw(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(
            self.booster.predict(X[self.feature_names].to_numpy(np.float64), num_threads=2)
        )

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return PlattMap.from_sklearn(self.calibrator)(self.raw(X))

    def save(self, directory: Path) -> list[str]:
        """Write the model files; returns their names (the manifest hashes them)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / BOOSTER_FILE).write_text(
            self.booster.model_to_string(num_iteration=self.best_iteration)
        )
        joblib.dump(self.calibrator, directory / CALIBRATOR_FILE)
        meta = {
            "best_iteration": self.best_iteration,
            "categorical": self.categorical,
            "params": self.params,
            **self.meta,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return [BOOSTER_FILE, CALIBRATOR_FILE, META_FILE]


def fit_fraud_model(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    *,
    feature_names: Sequence[str],
    categorical: Sequence[str],
    seed: int = 0,
    max_rounds: int = 800,
    early_stopping: int = 60,
) -> FittedFraudModel:
    """Fit LightGBM on the train period; stop early and Platt-calibrate on the later validation."""
    if len(np.unique(y_train)) < 2 or len(np.unique(y_valid)) < 2:
        raise ValueError("fraud training needs both fraud and good events in train and validation")
    names = list(feature_names)
    cats = [c for c in categorical if c in names]
    params = lgbm_params(seed)
    train_set = lgb.Dataset(
        X_train[names].to_numpy(np.float64),
        label=np.asarray(y_train, dtype=np.float64),
        feature_name=names,
        categorical_feature=cats,
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(
        X_valid[names].to_numpy(np.float64),
        label=np.asarray(y_valid, dtype=np.float64),
        reference=train_set,
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=max_rounds,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping, verbose=False)],
    )
    best = int(booster.best_iteration or booster.current_iteration())
    raw_valid = np.asarray(
        booster.predict(X_valid[names].to_numpy(np.float64), num_iteration=best), dtype=np.float64
    )
    # Platt scaling on the out-of-time validation period (see PlattMap for why not isotonic).
    calibrator = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
    calibrator.fit(logit(raw_valid).reshape(-1, 1), np.asarray(y_valid, dtype=np.int64))
    # Re-load from the text we will save, so what we evaluate is exactly what ships.
    shipped = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return FittedFraudModel(shipped, calibrator, names, cats, best, params)


# --- baselines -------------------------------------------------------------------------------

RULES: tuple[tuple[str, str], ...] = (
    ("new device and amount over 3x the account's mean", "new_device_big_amount"),
    ("5+ small payments from the device in 10 minutes", "card_testing_burst"),
    ("5+ accounts on the IP within an hour", "shared_ip"),
    ("travel faster than 800 km/h", "impossible_travel"),
    ("5+ incoming transfers in an hour, then money out", "mule_pass_through"),
)


def rule_scores(X: pd.DataFrame) -> np.ndarray:
    """The hand-written baseline: how many of a handful of classic rules fire (0-5)."""

    def col(name: str) -> np.ndarray:
        if name not in X.columns:
            return np.full(len(X), np.nan)
        return X[name].to_numpy(np.float64)

    with np.errstate(invalid="ignore"):
        fired = [
            (col("is_new_device_for_account") == 1) & (col("amount_to_account_mean_30d") > 3),
            col("device_small_payments_10m") >= 5,
            col("ip_distinct_accounts_1h") >= 5,
            col("speed_kmh_from_previous_location") > 800,
            (col("account_received_events_1h") >= 5) & np.isin(col("event_type"), [1, 2]),
        ]
    return np.sum(np.vstack([np.nan_to_num(f.astype(np.float64)) for f in fired]), axis=0)


def fit_logistic_baseline(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> Pipeline:
    """Logistic regression on the same features: impute, scale, one-hot the categories.

    Features never observed in training (an optional column the data lacks) are left out.
    """
    numeric = [c for c in numeric if X_train[c].notna().any()]
    categorical = [c for c in categorical if X_train[c].notna().any()]
    transform = ColumnTransformer(
        [
            (
                "num",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                        ("scale", StandardScaler()),
                    ]
                ),
                list(numeric),
            ),
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value=-1)),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                list(categorical),
            ),
        ]
    )
    model = Pipeline(
        [("prep", transform), ("lr", LogisticRegression(C=0.1, max_iter=300, solver="lbfgs"))]
    )
    clean = X_train.replace([np.inf, -np.inf], np.nan)
    # log1p on the heavy-tailed counts and amounts keeps the solver well conditioned
    model.fit(_log_features(clean, numeric), np.asarray(y_train, dtype=np.int64))
    return model


def _log_features(X: pd.DataFrame, numeric: Sequence[str]) -> pd.DataFrame:
    out = X.copy()
    cols = list(numeric)
    values = out[cols].to_numpy(np.float64)
    out[cols] = np.sign(values) * np.log1p(np.abs(values))
    return out


def logistic_scores(model: Pipeline, X: pd.DataFrame) -> np.ndarray:
    numeric = list(model.named_steps["prep"].transformers_[0][2])
    clean = X.replace([np.inf, -np.inf], np.nan)
    return np.asarray(model.predict_proba(_log_features(clean, numeric))[:, 1])


def shap_importance(
    model: FittedFraudModel, X: pd.DataFrame, *, sample: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Gain importance and mean |SHAP| (LightGBM pred_contrib) on a sample, per feature."""
    rng = np.random.default_rng(seed)
    rows: np.ndarray = rng.choice(len(X), size=min(sample, len(X)), replace=False)
    data = X.iloc[np.sort(rows)][model.feature_names].to_numpy(np.float64)
    contrib = np.asarray(model.booster.predict(data, pred_contrib=True, num_threads=2))[:, :-1]
    gain = model.booster.feature_importance(importance_type="gain")
    frame = pd.DataFrame(
        {
            "feature": model.feature_names,
            "gain": gain / max(gain.sum(), 1e-12),
            "mean_abs_shap": np.abs(contrib).mean(axis=0) if len(contrib) else 0.0,
        }
    )
    return frame.sort_values("mean_abs_shap", ascending=False).reset_index(drop=True)
