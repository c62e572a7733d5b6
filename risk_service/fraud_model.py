"""The fraud model at inference time: a LightGBM booster plus its calibration and thresholds.

Loaded only from a verified bundle. Prediction is pinned to one thread: LightGBM's
default OpenMP threads inside sync web workers collapse throughput.

Contributions for reasons come one of two ways (`REASONS_METHODS`, the service setting
``REASONS_METHOD``): ``"treeshap"``, exact TreeSHAP, the values of LightGBM's
``pred_contrib`` computed on the compiled forest (`risk_service.treeshap`, about a third of
LightGBM's own time: 1.9 ms a row on the fraud model against 5.5 ms in one run), or
``"path"``, path attribution on the compiled forest (tens of µs a row; what it means and
how often it names the same reasons: `risk_service.explain`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np

from risk_service.bundles import VerifiedBundle
from risk_service.config import DEFAULTS
from risk_service.treeshap import compile_booster, shap_values

BOOSTER_FILE = "fraud_lgbm.txt"
CALIBRATOR_FILE = "fraud_calibrator.joblib"
META_FILE = "fraud_meta.json"
REASONS_METHODS = ("path", "treeshap")


def check_reasons_method(method: str) -> str:
    """`method` if it names a way to compute contributions, else ValueError naming them."""
    if method not in REASONS_METHODS:
        raise ValueError(f"REASONS_METHOD must be one of {', '.join(REASONS_METHODS)}: {method!r}")
    return method


def logit(p: np.ndarray) -> np.ndarray:
    # np.minimum/np.maximum rather than np.clip: the same values (NaN stays NaN), without
    # np.clip's Python dispatch, which cost more than the arithmetic on a request's one row
    clipped = np.minimum(np.maximum(np.asarray(p, dtype=np.float64), 1e-9), 1 - 1e-9)
    return np.log(clipped / (1.0 - clipped))


@dataclass
class PlattMap:
    """Platt calibration: sigmoid(slope * logit(raw) + intercept).

    Chosen over isotonic regression because fraud validation sets hold few
    positives: isotonic steps would tie thousands of events on one probability
    and erase the ranking the model learned.
    """

    slope: float
    intercept: float

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if raw.shape == (1,):  # a request's one row: 1.4 against 6 µs, the same bits
            return np.array([self.one(float(raw[0]))])
        z = self.slope * logit(raw) + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def one(self, raw: float) -> float:
        """One calibrated probability: numpy's log and exp (whose last bit can differ from
        the math module's) on a float, with Python's arithmetic, which rounds as numpy's does,
        so a request's probability is the backtest's to the bit (tests/test_reasons.py)."""
        clipped = min(max(raw, 1e-9), 1 - 1e-9)  # NaN stays NaN, as with np.maximum
        z = self.slope * float(np.log(clipped / (1.0 - clipped))) + self.intercept
        return 1.0 / (1.0 + float(np.exp(-z)))

    @classmethod
    def from_sklearn(cls, logistic: Any) -> PlattMap:
        return cls(float(logistic.coef_[0][0]), float(logistic.intercept_[0]))


class FraudModel:
    """Calibrated fraud probabilities and per-feature contributions for one bundle."""

    def __init__(
        self, bundle: VerifiedBundle, *, reasons_method: str = DEFAULTS["REASONS_METHOD"]
    ) -> None:
        """``reasons_method`` is what `contributions` uses when not told (REASONS_METHODS)."""
        self.reasons_method = check_reasons_method(reasons_method)
        self.bundle = bundle
        self.version = bundle.version
        self.feature_names: list[str] = list(bundle.manifest["feature_names"])
        self.thresholds: dict[str, float] = dict(bundle.manifest["thresholds"])
        # Verified before this point: the joblib file's hash matched the manifest.
        self.booster = lgb.Booster(model_str=bundle.path(BOOSTER_FILE).read_text())
        # Scores and both kinds of contributions come from the compiled forest (bit-identical
        # scores, ~20 µs a row, no OpenMP); the booster stays as TreeSHAP's fallback.
        self.forest, self.treeshap = compile_booster(self.booster, f"fraud bundle {self.version}")
        self.calibrate = PlattMap.from_sklearn(joblib.load(bundle.path(CALIBRATOR_FILE)))
        self.meta: dict[str, Any] = json.loads(bundle.path(META_FILE).read_text())
        if self.booster.feature_name() != self.feature_names:
            raise ValueError(f"fraud bundle {self.version}: booster features differ from manifest")

    def raw(self, X: np.ndarray) -> np.ndarray:
        return self.forest.predict_proba(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probability of fraud per row of X (columns in feature_names order)."""
        return self.calibrate(self.raw(np.asarray(X, dtype=np.float64)))

    def contributions(self, X: np.ndarray, method: str | None = None) -> np.ndarray:
        """Per-feature contributions to the raw log-odds, (n, n_features), bias dropped.

        ``method``: "treeshap" (exact TreeSHAP, LightGBM's ``pred_contrib`` values to float
        rounding) or "path" (path attribution); None means the model's `reasons_method`.
        """
        method = self.reasons_method if method is None else check_reasons_method(method)
        X = np.asarray(X, dtype=np.float64)
        if method == "path":
            return self.forest.path_contributions(X)[:, :-1]
        return shap_values(self.treeshap, self.booster, X)
